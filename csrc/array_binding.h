// The Python view of an array (ArrayView) and the metric code, shared by the native module reidfast._C
// and the CUDA emulator module reidfast._cuda_emulator.
#pragma once

#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <cstdint>
#include <string>
#include <utility>
#include <vector>

#include "common/array.h"

namespace reidfast {
namespace bindings {

inline ArrayView make_view(std::uintptr_t data, int dtype, std::vector<int64_t> shape, std::vector<int64_t> strides,
                           int device) {
  check(dtype >= 0 && dtype <= static_cast<int>(DType::UInt8), "unknown dtype code " + std::to_string(dtype));
  check(shape.size() == strides.size(), "shape and strides must have the same length");
  ArrayView view;
  view.data = reinterpret_cast<void*>(data);
  view.dtype = static_cast<DType>(dtype);
  view.shape = std::move(shape);
  view.strides = std::move(strides);
  view.device = device;
  return view;
}

inline Metric to_metric(int code) {
  check(code >= 0 && code <= static_cast<int>(Metric::Cosine), "unknown metric code " + std::to_string(code));
  return static_cast<Metric>(code);
}

// module_local: a second module binding the same C++ type keeps its own Python class. dynamic_attr: the
// Python side stores the array that owns the memory on its view (reidfast._native.view), so a view of a
// temporary keeps the temporary alive for as long as a kernel call holds the view.
inline void add_array_view(pybind11::module_& m, bool module_local) {
  namespace py = pybind11;
  py::class_<ArrayView>(m, "ArrayView", py::module_local(module_local), py::dynamic_attr())
      .def(py::init(&make_view), py::arg("data"), py::arg("dtype"), py::arg("shape"), py::arg("strides"),
           py::arg("device"))
      .def_property_readonly("shape", [](const ArrayView& v) { return v.shape; })
      .def_property_readonly("strides", [](const ArrayView& v) { return v.strides; })
      .def_property_readonly("device", [](const ArrayView& v) { return v.device; })
      .def_property_readonly("dtype", [](const ArrayView& v) { return static_cast<int>(v.dtype); });
}

}  // namespace bindings
}  // namespace reidfast
