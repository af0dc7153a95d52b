// Shared by the pybind11 module's translation units (csrc/bindings*.cpp): argument conversions and the engine's
// bindings. Only these files may include pybind11 (the engine core runs with no Python interpreter).
#pragma once

#include <pybind11/functional.h>
#include <pybind11/stl.h>
#include <torch/extension.h>

#include <optional>

#include "csrc/hooks/hook_registry.h"

namespace py = pybind11;

namespace infinilm::pybind {

// torch.Tensor, an adapter tensor carrying one in `._underlying`, a list of ints, or None.
std::optional<at::Tensor> as_tensor(py::handle obj, const char* name);
// "cpu", "cuda", "nvidia", torch.device, an adapter Device/Device.Type (anything with .name).
c10::DeviceType parse_device_type(py::handle obj);
// Python callables kept alive by C++ std::function: released and called under the GIL.
infinilm::models::debug_utils::HookCallback wrap_callback(py::function fn);
// InferEngine, its Input / Output, HookRegistry and the communicators (csrc/bindings_engine.cpp).
void bind_engine(py::module_& m);

}  // namespace infinilm::pybind
