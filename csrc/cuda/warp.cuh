// Warp constants shared by the CUDA kernels (top-k lists, batch-hard mining and its backward).
#pragma once

namespace reidfast {
namespace cuda {

constexpr int kWarp = 32;
constexpr unsigned kFullMask = 0xffffffffu;  // every lane of a warp, for the *_sync intrinsics

}  // namespace cuda
}  // namespace reidfast
