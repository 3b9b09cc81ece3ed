// Self-test kernels of the CPU emulator (self_test.cpp), bound in module.cpp.
#pragma once

#include <cstddef>
#include <string>
#include <utility>
#include <vector>

namespace reidfast {
namespace emulator {
namespace self_test {

// Each block of `threads` values reversed in shared memory, with or without a barrier between write and read.
std::vector<int> mirror(const std::vector<int>& values, int threads, bool barrier);
// One block of values.size() threads: every lane's warp sum (xor shuffles) and ballot of odd values.
std::pair<std::vector<int>, std::vector<unsigned>> warp_sums_and_ballots(const std::vector<int>& values);
// Runs a kernel that breaks a rule ("early_exit", "deadlock", "partial_warp") or reads dynamic shared
// memory ("dynamic_shared"); returns what the threads wrote.
std::vector<int> run(const std::string& kernel, int threads, int blocks);
// cudaGetErrorName of an empty kernel's launch with this configuration (cudaFuncSetAttribute first when
// max_dynamic_shared_bytes >= 0).
std::string launch_error(unsigned grid_x, unsigned grid_y, unsigned block_x, std::size_t shared_bytes,
                         int max_dynamic_shared_bytes);

}  // namespace self_test
}  // namespace emulator
}  // namespace reidfast
