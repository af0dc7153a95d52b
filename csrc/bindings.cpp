// pybind11 module _infinilm: engine classes only (operators live in torch.ops.infinilm).
#include <torch/extension.h>

PYBIND11_MODULE(_infinilm, m) {
  m.doc() = "infinilm_torch C++ engine (operators are registered as torch.ops.infinilm.*)";
}
