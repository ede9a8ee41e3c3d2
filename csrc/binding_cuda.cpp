// Python module of the CUDA extension. The op schemas live in _C (imported first by
// elmo_fast._ext); the .cu files only add TORCH_LIBRARY_IMPL(elmo_fast, CUDA, m) kernels.
#include <torch/extension.h>

PYBIND11_MODULE(_C_cuda, m) { m.doc() = "elmo_fast CUDA kernels (registered under torch.ops.elmo_fast)"; }
