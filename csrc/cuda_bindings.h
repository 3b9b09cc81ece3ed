// The Python bindings of the CUDA kernels (csrc/cuda), shared by reidfast._C (built with nvcc) and
// reidfast._cuda_emulator (the same kernels compiled for the CPU emulator).
#pragma once

#include <pybind11/pybind11.h>

namespace reidfast {
namespace bindings {

void add_cuda_kernels(pybind11::module_& m);

}  // namespace bindings
}  // namespace reidfast
