// The fiber scheduler behind emulator.h: one fiber per CUDA thread, blocks run in turn.
// Fiber switching and stacks are in fiber.cpp.
#include "emulator.h"

#include <algorithm>
#include <cstdlib>
#include <mutex>
#include <numeric>
#include <random>
#include <sstream>
#include <stdexcept>
#include <string>
#include <unordered_map>
#include <vector>

#include "fiber.h"

namespace reidfast {
namespace emulator {
namespace {

constexpr int kWarpSize = 32;
constexpr unsigned int kMaxThreadsPerBlock = 1024;
constexpr unsigned int kMaxBlockZ = 64;
constexpr unsigned int kMaxGridX = 2147483647u;
constexpr unsigned int kMaxGridYZ = 65535u;
constexpr std::size_t kDefaultSharedLimit = 48 * 1024;  // without cudaFuncSetAttribute
constexpr int kMaxSharedOptIn = 227 * 1024;             // sm_90 (H100): 227 KiB per block

enum class Wait { kNone, kBlock, kWarp };

struct Fiber {
  Context context;
  char* stack = nullptr;
  uint3 thread{0, 0, 0};
  int linear = 0;  // threadIdx.x + blockDim.x * (threadIdx.y + blockDim.y * threadIdx.z)
  std::uint64_t block_arrivals = 0;
  std::uint64_t warp_arrivals = 0;
  Wait wait = Wait::kNone;
  bool finished = false;
};

struct Block {
  std::vector<Fiber> fibers;
  Context scheduler;
  int running = -1;
  ThreadCoordinates coordinates{};
  std::vector<std::uint64_t> warp_slots;  // one word per thread, for shuffles and ballots
  std::vector<std::uint64_t> warp_floor;  // per warp, per scheduling pass: least warp_arrivals of its lanes
  std::vector<int> warp_finished;         // per warp, per scheduling pass: lanes that have exited
  std::vector<unsigned char> dynamic_shared;
  const std::function<void()>* body = nullptr;
  std::string fault;  // set by a fiber that broke a rule; the launch throws it
};

std::mutex launch_mutex;  // one launch at a time: __shared__ statics are process-wide
Block* current_block = nullptr;
StackPool stack_pool;
std::unordered_map<const void*, int> max_dynamic_shared;  // per kernel, from cudaFuncSetAttribute
cudaError_t last_error = cudaSuccess;
std::string schedule_order = "forward";
std::mt19937_64 schedule_random(0);
Statistics counters;

Fiber& running_fiber() { return current_block->fibers[static_cast<std::size_t>(current_block->running)]; }

void yield_to_scheduler() { switch_context(running_fiber().context, current_block->scheduler); }

std::string describe(const Block& block, const Fiber& fiber, const std::string& what) {
  std::ostringstream message;
  message << "cuda emulator: block (" << block.coordinates.block.x << ", " << block.coordinates.block.y << ", "
          << block.coordinates.block.z << "), thread (" << fiber.thread.x << ", " << fiber.thread.y << ", "
          << fiber.thread.z << "): " << what;
  return message.str();
}

// Ends the running fiber with a rule violation: the scheduler stops the block and the launch throws.
[[noreturn]] void fault(const std::string& what) {
  Block& block = *current_block;
  Fiber& fiber = running_fiber();
  if (block.fault.empty()) block.fault = describe(block, fiber, what);
  fiber.finished = true;
  yield_to_scheduler();
  std::abort();  // unreachable: a finished fiber is never resumed
}

void fiber_main() {
  sanitizer_arrived(nullptr, &current_block->scheduler);  // first entry: learn the scheduler's stack
  (*current_block->body)();
  running_fiber().finished = true;
  yield_to_scheduler();
  std::abort();  // unreachable: a finished fiber is never resumed
}

int warp_lanes(const Block& block, int warp) {
  const int threads = static_cast<int>(block.fibers.size());
  return std::min(kWarpSize, threads - warp * kWarpSize);
}

void check_warp_mask(unsigned int mask, const char* collective) {
  Block& block = *current_block;
  const int warp = running_fiber().linear / kWarpSize;
  const int lanes = warp_lanes(block, warp);
  const unsigned int present = lanes == kWarpSize ? 0xffffffffu : ((1u << lanes) - 1u);
  if (mask != present) {
    std::ostringstream why;
    why << collective << " with mask 0x" << std::hex << mask << ": the emulator supports only the mask of all "
        << "present lanes (0x" << present << ")";
    fault(why.str());
  }
}

void warp_barrier() {
  Fiber& fiber = running_fiber();
  ++fiber.warp_arrivals;
  fiber.wait = Wait::kWarp;
  yield_to_scheduler();
  fiber.wait = Wait::kNone;
}

// One pass of the scheduler: resumes every fiber whose barrier has been reached by all it covers.
// Returns whether any fiber ran.
bool run_pass(Block& block, std::vector<int>& order) {
  std::uint64_t block_floor = UINT64_MAX;  // least block_arrivals among unfinished fibers
  std::vector<std::uint64_t>& warp_floor = block.warp_floor;
  std::vector<int>& warp_finished = block.warp_finished;
  std::fill(warp_floor.begin(), warp_floor.end(), UINT64_MAX);
  std::fill(warp_finished.begin(), warp_finished.end(), 0);
  for (const Fiber& fiber : block.fibers) {
    const int warp = fiber.linear / kWarpSize;
    if (fiber.finished) {
      ++warp_finished[static_cast<std::size_t>(warp)];
      continue;
    }
    block_floor = std::min(block_floor, fiber.block_arrivals);
    std::uint64_t& floor = warp_floor[static_cast<std::size_t>(warp)];
    floor = std::min(floor, fiber.warp_arrivals);
  }
  if (schedule_order == "shuffle") std::shuffle(order.begin(), order.end(), schedule_random);

  bool ran = false;
  for (const int index : order) {
    Fiber& fiber = block.fibers[static_cast<std::size_t>(index)];
    if (fiber.finished) continue;
    const int warp = fiber.linear / kWarpSize;
    if (fiber.wait == Wait::kBlock && block_floor < fiber.block_arrivals) continue;
    if (fiber.wait == Wait::kWarp) {
      if (warp_finished[static_cast<std::size_t>(warp)] > 0) {
        block.fault = describe(block, fiber, "a warp collective waits for a lane of its warp that has exited");
        return true;
      }
      if (warp_floor[static_cast<std::size_t>(warp)] < fiber.warp_arrivals) continue;
    }
    block.running = index;
    switch_context(block.scheduler, fiber.context);
    block.running = -1;
    ran = true;
    if (!block.fault.empty()) return true;
  }
  return ran;
}

void run_block(Block& block, const uint3& block_index) {
  block.coordinates.block = block_index;
  block.fault.clear();
  std::fill(block.dynamic_shared.begin(), block.dynamic_shared.end(), static_cast<unsigned char>(0xFF));
  const dim3 shape = block.coordinates.block_dim;
  const int threads = static_cast<int>(block.fibers.size());
  for (int linear = 0; linear < threads; ++linear) {
    Fiber& fiber = block.fibers[static_cast<std::size_t>(linear)];
    fiber = Fiber{};
    fiber.linear = linear;
    fiber.thread = uint3{linear % shape.x, (linear / shape.x) % shape.y, linear / (shape.x * shape.y)};
    fiber.stack = stack_pool.get(static_cast<std::size_t>(linear));
    make_context(fiber.context, fiber.stack, kStackBytes, fiber_main);
    fiber.context.stack_bottom = fiber.stack;
    fiber.context.stack_size = kStackBytes;
  }
  std::vector<int> order(static_cast<std::size_t>(threads));
  std::iota(order.begin(), order.end(), 0);
  if (schedule_order == "reverse") std::reverse(order.begin(), order.end());

  while (true) {
    const bool ran = run_pass(block, order);
    if (!block.fault.empty()) throw std::runtime_error(block.fault);
    if (std::all_of(block.fibers.begin(), block.fibers.end(), [](const Fiber& f) { return f.finished; })) break;
    if (!ran) {
      std::ostringstream why;
      why << "cuda emulator: block (" << block_index.x << ", " << block_index.y << ", " << block_index.z
          << ") deadlocked: threads wait at barriers that the others never reach (";
      int listed = 0;
      for (const Fiber& fiber : block.fibers) {
        if (fiber.finished || listed == 4) continue;
        why << (listed++ ? ", " : "") << "thread " << fiber.linear << " at "
            << (fiber.wait == Wait::kBlock ? "__syncthreads #" : "warp collective #")
            << (fiber.wait == Wait::kBlock ? fiber.block_arrivals : fiber.warp_arrivals);
      }
      why << ")";
      throw std::runtime_error(why.str());
    }
  }
  counters.blocks += 1;
  counters.threads += static_cast<std::uint64_t>(threads);
}

cudaError_t check_configuration(const void* kernel, dim3 grid, dim3 block, std::size_t shared_bytes) {
  const unsigned long long threads = 1ull * block.x * block.y * block.z;
  if (threads == 0 || threads > kMaxThreadsPerBlock || block.z > kMaxBlockZ) return cudaErrorInvalidConfiguration;
  if (grid.x == 0 || grid.y == 0 || grid.z == 0 || grid.x > kMaxGridX || grid.y > kMaxGridYZ || grid.z > kMaxGridYZ)
    return cudaErrorInvalidConfiguration;
  std::size_t limit = kDefaultSharedLimit;
  const auto raised = max_dynamic_shared.find(kernel);
  if (raised != max_dynamic_shared.end()) limit = std::max(limit, static_cast<std::size_t>(raised->second));
  if (shared_bytes > limit) return cudaErrorInvalidValue;
  return cudaSuccess;
}

}  // namespace

const ThreadCoordinates& coordinates() {
  Block& block = *current_block;
  block.coordinates.thread = block.fibers[static_cast<std::size_t>(block.running)].thread;
  return block.coordinates;
}

void sync_block() {
  Fiber& fiber = running_fiber();
  ++counters.barriers;
  ++fiber.block_arrivals;
  fiber.wait = Wait::kBlock;
  yield_to_scheduler();
  fiber.wait = Wait::kNone;
}

void sync_warp(unsigned int mask) {
  check_warp_mask(mask, "__syncwarp");
  ++counters.warp_collectives;
  warp_barrier();
}

std::uint64_t shuffle_xor(std::uint64_t bits, unsigned int mask, int lane_mask, int width) {
  check_warp_mask(mask, "__shfl_xor_sync");
  if (width != kWarpSize) fault("__shfl_xor_sync: the emulator supports only width 32");
  ++counters.warp_collectives;
  Block& block = *current_block;
  const int linear = running_fiber().linear;
  const int lane = linear % kWarpSize;
  const int first = linear - lane;
  block.warp_slots[static_cast<std::size_t>(linear)] = bits;
  warp_barrier();  // every lane has posted its word
  const int source = lane ^ (lane_mask & (kWarpSize - 1));
  const std::uint64_t out = source < warp_lanes(block, first / kWarpSize)
                                ? block.warp_slots[static_cast<std::size_t>(first + source)]
                                : bits;
  warp_barrier();  // every lane has read before any posts its next word
  return out;
}

unsigned int ballot(unsigned int mask, bool predicate) {
  check_warp_mask(mask, "__ballot_sync");
  ++counters.warp_collectives;
  Block& block = *current_block;
  const int linear = running_fiber().linear;
  const int first = linear - linear % kWarpSize;
  block.warp_slots[static_cast<std::size_t>(linear)] = predicate ? 1 : 0;
  warp_barrier();
  unsigned int votes = 0;
  for (int lane = 0; lane < warp_lanes(block, first / kWarpSize); ++lane)
    if (block.warp_slots[static_cast<std::size_t>(first + lane)]) votes |= 1u << lane;
  warp_barrier();
  return votes & mask;
}

unsigned char* dynamic_shared() {
  Block& block = *current_block;
  return block.dynamic_shared.empty() ? nullptr : block.dynamic_shared.data();
}

cudaError_t set_max_dynamic_shared_bytes(const void* kernel, int bytes) {
  std::lock_guard<std::mutex> lock(launch_mutex);
  if (bytes < 0 || bytes > kMaxSharedOptIn) return last_error = cudaErrorInvalidValue;
  max_dynamic_shared[kernel] = bytes;
  return cudaSuccess;
}

void launch(const void* kernel, dim3 grid, dim3 block_shape, std::size_t dynamic_shared_bytes,
            const std::function<void()>& body) {
  std::lock_guard<std::mutex> lock(launch_mutex);
  const cudaError_t configuration = check_configuration(kernel, grid, block_shape, dynamic_shared_bytes);
  if (configuration != cudaSuccess) {
    last_error = configuration;
    return;
  }
  Block block;
  block.body = &body;
  block.coordinates.block_dim = block_shape;
  block.coordinates.grid_dim = grid;
  const std::size_t threads = 1ull * block_shape.x * block_shape.y * block_shape.z;
  block.fibers.resize(threads);
  block.warp_slots.assign(threads, 0);
  block.warp_floor.resize((threads + kWarpSize - 1) / kWarpSize);
  block.warp_finished.resize((threads + kWarpSize - 1) / kWarpSize);
  block.dynamic_shared.resize(dynamic_shared_bytes);
  current_block = &block;
  counters.launches += 1;
  try {
    for (unsigned int z = 0; z < grid.z; ++z)
      for (unsigned int y = 0; y < grid.y; ++y)
        for (unsigned int x = 0; x < grid.x; ++x) run_block(block, uint3{x, y, z});
  } catch (...) {
    current_block = nullptr;
    throw;
  }
  current_block = nullptr;
}

void set_schedule(const char* order, std::uint64_t seed) {
  const std::string name(order);
  if (name != "forward" && name != "reverse" && name != "shuffle")
    throw std::invalid_argument("order: expected 'forward', 'reverse' or 'shuffle', got '" + name + "'");
  std::lock_guard<std::mutex> lock(launch_mutex);
  schedule_order = name;
  schedule_random.seed(seed);
}

Statistics statistics() {
  std::lock_guard<std::mutex> lock(launch_mutex);
  return counters;
}

void reset_statistics() {
  std::lock_guard<std::mutex> lock(launch_mutex);
  counters = Statistics{};
}

}  // namespace emulator
}  // namespace reidfast

// --- runtime API -----------------------------------------------------------------------------------------
using reidfast::emulator::last_error;

cudaError_t cudaGetLastError() {
  const cudaError_t error = last_error;
  last_error = cudaSuccess;
  return error;
}

cudaError_t cudaGetDevice(int* device) {
  *device = 0;
  return cudaSuccess;
}

cudaError_t cudaSetDevice(int device) { return device == 0 ? cudaSuccess : (last_error = cudaErrorInvalidDevice); }

cudaError_t cudaGetDeviceCount(int* count) {
  *count = 1;
  return cudaSuccess;
}

cudaError_t cudaRuntimeGetVersion(int* version) {
  *version = 0;  // no CUDA runtime: the emulator
  return cudaSuccess;
}

const char* cudaGetErrorName(cudaError_t error) {
  switch (error) {
    case cudaSuccess: return "cudaSuccess";
    case cudaErrorInvalidValue: return "cudaErrorInvalidValue";
    case cudaErrorInvalidConfiguration: return "cudaErrorInvalidConfiguration";
    case cudaErrorInvalidDevice: return "cudaErrorInvalidDevice";
    case cudaErrorLaunchFailure: return "cudaErrorLaunchFailure";
  }
  return "cudaErrorUnknown";
}

const char* cudaGetErrorString(cudaError_t error) {
  switch (error) {
    case cudaSuccess: return "no error";
    case cudaErrorInvalidValue: return "invalid argument";
    case cudaErrorInvalidConfiguration: return "invalid configuration argument";
    case cudaErrorInvalidDevice: return "invalid device ordinal";
    case cudaErrorLaunchFailure: return "unspecified launch failure";
  }
  return "unknown error";
}
