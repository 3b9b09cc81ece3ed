// Fiber switching for the CUDA emulator; see fiber.h.
#include "fiber.h"

#if defined(__SANITIZE_ADDRESS__)
#include <sanitizer/asan_interface.h>
#include <sanitizer/common_interface_defs.h>
#endif
#include <sys/mman.h>
#include <unistd.h>

#include <algorithm>
#include <cstdint>
#include <cstring>
#include <stdexcept>

// Fiber switches. On x86-64 Linux a 21-instruction switch of the callee-saved registers (the System V ABI's:
// rbx, rbp, r12-r15, the MXCSR and x87 control words); elsewhere ucontext, whose swapcontext also saves the
// signal mask with a system call per switch (several times slower: the emulator switches at every barrier).
#ifdef REIDFAST_EMULATOR_FAST_SWITCH
extern "C" void reidfast_emulator_switch(void** save_stack, void* load_stack);
asm(R"(
.pushsection .text
.globl reidfast_emulator_switch
.hidden reidfast_emulator_switch
.type reidfast_emulator_switch,@function
reidfast_emulator_switch:
  pushq %rbp
  pushq %rbx
  pushq %r12
  pushq %r13
  pushq %r14
  pushq %r15
  subq $8, %rsp
  stmxcsr (%rsp)
  fnstcw 4(%rsp)
  movq %rsp, (%rdi)
  movq %rsi, %rsp
  ldmxcsr (%rsp)
  fldcw 4(%rsp)
  addq $8, %rsp
  popq %r15
  popq %r14
  popq %r13
  popq %r12
  popq %rbx
  popq %rbp
  ret
.size reidfast_emulator_switch, .-reidfast_emulator_switch
.popsection
)");
#endif

namespace reidfast {
namespace emulator {

namespace {

#if defined(__SANITIZE_ADDRESS__)
// Under -fsanitize=address (the emulator's memcheck build) ASan must be told about every stack switch.
void sanitizer_enter(Context& load, void** fake_stack) {
  __sanitizer_start_switch_fiber(fake_stack, load.stack_bottom, load.stack_size);
}
#else
void sanitizer_enter(Context&, void**) {}
#endif

}  // namespace

#if defined(__SANITIZE_ADDRESS__)
void sanitizer_arrived(void* fake_stack, Context* from) {
  const void* bottom = nullptr;
  std::size_t size = 0;
  __sanitizer_finish_switch_fiber(fake_stack, &bottom, &size);
  if (from != nullptr && from->stack_bottom == nullptr) {
    from->stack_bottom = bottom;
    from->stack_size = size;
  }
}
#else
void sanitizer_arrived(void*, Context*) {}
#endif

void switch_context(Context& save, Context& load) {
  void* fake_stack = nullptr;
  sanitizer_enter(load, &fake_stack);
#ifdef REIDFAST_EMULATOR_FAST_SWITCH
  reidfast_emulator_switch(&save.stack_pointer, load.stack_pointer);
#else
  swapcontext(&save.context, &load.context);
#endif
  sanitizer_arrived(fake_stack, nullptr);
}

void make_context(Context& context, char* stack, std::size_t bytes, void (*entry)()) {
#if defined(__SANITIZE_ADDRESS__)
  ASAN_UNPOISON_MEMORY_REGION(stack, bytes);  // frames of the stack's previous fiber, which never returned
#endif
#ifdef REIDFAST_EMULATOR_FAST_SWITCH
  // The frame reidfast_emulator_switch pops: control words, r15..r12, rbx, rbp, then `ret` to entry
  // with the stack as after a call (rsp = 8 mod 16). entry never returns.
  auto* top = reinterpret_cast<std::uint64_t*>(reinterpret_cast<std::uintptr_t>(stack + bytes) & ~std::uintptr_t{15});
  std::uint64_t* frame = top - 2;  // top - 1: entry's (never used) return address
  frame[0] = reinterpret_cast<std::uint64_t>(entry);
  frame -= 6;
  std::fill(frame, frame + 6, std::uint64_t{0});  // rbp, rbx, r12-r15 of the new fiber
  frame -= 1;
  std::uint32_t mxcsr;
  std::uint16_t x87_control;
  asm volatile("stmxcsr %0" : "=m"(mxcsr));
  asm volatile("fnstcw %0" : "=m"(x87_control));
  std::memcpy(frame, &mxcsr, 4);
  std::memcpy(reinterpret_cast<char*>(frame) + 4, &x87_control, 2);
  context.stack_pointer = frame;
#else
  getcontext(&context.context);
  context.context.uc_stack.ss_sp = stack;
  context.context.uc_stack.ss_size = bytes;
  context.context.uc_link = nullptr;  // entry never returns
  makecontext(&context.context, entry, 0);
#endif
}

char* StackPool::get(std::size_t index) {
  while (stacks_.size() <= index) {
    const std::size_t page = static_cast<std::size_t>(sysconf(_SC_PAGESIZE));
    void* memory = mmap(nullptr, kStackBytes + page, PROT_READ | PROT_WRITE,
                        MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
    if (memory == MAP_FAILED) throw std::runtime_error("cuda emulator: cannot map a fiber stack");
    mprotect(memory, page, PROT_NONE);  // a stack overflow faults instead of corrupting a neighbour
    stacks_.push_back(static_cast<char*>(memory) + page);
  }
  return stacks_[index];
}

}  // namespace emulator
}  // namespace reidfast
