// The one Python module of the CPU extension. Ops live in csrc/<op>/ and register themselves with
// TORCH_LIBRARY_FRAGMENT(elmo_fast, m), so they are reachable as torch.ops.elmo_fast.<op> and
// torch.library.opcheck can inspect them; this file only owns the library and the module init.
#include <torch/extension.h>

TORCH_LIBRARY(elmo_fast, m) {}

PYBIND11_MODULE(_C, m) { m.doc() = "elmo_fast CPU kernels (ops are registered under torch.ops.elmo_fast)"; }
