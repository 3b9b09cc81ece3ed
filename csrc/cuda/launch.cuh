// Kernel launches and dynamic shared memory, spelled so that the same sources also build for the CPU
// emulator (csrc/cuda_emulator, macro REIDFAST_CUDA_EMULATION), where `<<<...>>>` and `extern __shared__`
// do not exist. Launch a kernel through a function pointer (template arguments hold commas):
//   const auto kernel = my_kernel<InT, AccT>;
//   REIDFAST_LAUNCH(kernel, grid, threads, dynamic_shared_bytes, stream)(arguments...);
#pragma once

#ifdef REIDFAST_CUDA_EMULATION
#define REIDFAST_LAUNCH(kernel, grid, block, shared_bytes, stream) \
  ::reidfast::emulator::make_launcher(kernel, grid, block, shared_bytes, stream)
#define REIDFAST_DYNAMIC_SHARED(name) unsigned char* const name = ::reidfast::emulator::dynamic_shared()
#else
#define REIDFAST_LAUNCH(kernel, grid, block, shared_bytes, stream) kernel<<<grid, block, shared_bytes, stream>>>
#define REIDFAST_DYNAMIC_SHARED(name) extern __shared__ __align__(16) unsigned char name[]
#endif
