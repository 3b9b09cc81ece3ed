// reidfast._cuda_emulator: the CUDA kernels of csrc/cuda compiled for the CPU emulator (emulator.h), with
// the same bindings as reidfast._C. Arrays live in host memory but are passed as device 0. For tests.
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <cstdint>
#include <string>

#include "../array_binding.h"
#include "../cuda_bindings.h"
#include "emulator.h"
#include "self_test.h"

namespace py = pybind11;

PYBIND11_MODULE(_cuda_emulator, m) {
  m.doc() = "reidfast's CUDA kernels on a CPU emulator (one fiber per CUDA thread), for tests without a GPU.";
  reidfast::bindings::add_array_view(m, /*module_local=*/true);
  reidfast::bindings::add_cuda_kernels(m);
  m.def(
      "set_schedule",
      [](const std::string& order, std::uint64_t seed) { reidfast::emulator::set_schedule(order.c_str(), seed); },
      py::arg("order"), py::arg("seed") = 0,
      "The order emulated threads run in between barriers: 'forward', 'reverse' or 'shuffle' (seeded).");
  m.def("statistics", [] {
    const reidfast::emulator::Statistics s = reidfast::emulator::statistics();
    py::dict out;
    out["launches"] = s.launches;
    out["blocks"] = s.blocks;
    out["threads"] = s.threads;
    out["barriers"] = s.barriers;
    out["warp_collectives"] = s.warp_collectives;
    return out;
  });
  m.def("reset_statistics", &reidfast::emulator::reset_statistics);

  namespace self_test = reidfast::emulator::self_test;
  py::module_ tests = m.def_submodule("self_test", "Kernels that check the emulator itself.");
  tests.def("mirror", &self_test::mirror, py::arg("values"), py::arg("threads"), py::arg("barrier"));
  tests.def("warp_sums_and_ballots", &self_test::warp_sums_and_ballots, py::arg("values"));
  tests.def("run", &self_test::run, py::arg("kernel"), py::arg("threads"), py::arg("blocks") = 1);
  tests.def("launch_error", &self_test::launch_error, py::arg("grid_x"), py::arg("grid_y"), py::arg("block_x"),
            py::arg("shared_bytes"), py::arg("max_dynamic_shared_bytes") = -1);
}
