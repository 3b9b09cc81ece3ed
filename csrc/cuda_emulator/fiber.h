// Fiber switching for the CUDA emulator (emulator.cpp): execution contexts on mmap'd stacks, and the
// switch between them (a hand-written one on x86-64 Linux, ucontext elsewhere), annotated for
// AddressSanitizer in the memcheck build.
#pragma once

#include <cstddef>
#include <vector>

#if defined(__x86_64__) && defined(__linux__) && !defined(REIDFAST_EMULATOR_UCONTEXT)
#define REIDFAST_EMULATOR_FAST_SWITCH 1
#else
#include <ucontext.h>
#endif

namespace reidfast {
namespace emulator {

constexpr std::size_t kStackBytes = 256 * 1024;  // per fiber; kernels keep their arrays in "registers"

// A suspended execution context: its saved stack pointer, or a ucontext.
struct Context {
#ifdef REIDFAST_EMULATOR_FAST_SWITCH
  void* stack_pointer = nullptr;
#else
  ucontext_t context;
#endif
  // The stack's extent, for AddressSanitizer's fiber annotations (the scheduler's is learnt on first switch).
  const void* stack_bottom = nullptr;
  std::size_t stack_size = 0;
};

// Saves the running context in `save` and resumes `load`.
void switch_context(Context& save, Context& load);

// Prepares `context` to start entry() on the stack [stack, stack + bytes); entry must never return.
void make_context(Context& context, char* stack, std::size_t bytes, void (*entry)());

// For a fiber's first entry under AddressSanitizer: completes the switch that started it and records the
// stack it came from in *from (when from's extent is not known yet). A no-op in other builds.
void sanitizer_arrived(void* fake_stack, Context* from);

// Fiber stacks, kept for the life of the process (mmap'd, each with a guard page below it).
class StackPool {
 public:
  char* get(std::size_t index);  // the index-th stack, kStackBytes long, mapped on first use

 private:
  std::vector<char*> stacks_;
};

}  // namespace emulator
}  // namespace reidfast
