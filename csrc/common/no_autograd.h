// The Autograd-key kernel of every raw elmo_fast op that takes tensors.
//
// The raw ops are kernels: their gradients belong to the autograd Functions in
// elmo_fast/ops/<op>/function.py, which call them with grad mode off. PyTorch's fallback for an op
// without an Autograd kernel lets a direct torch.ops.elmo_fast.<op>(...) call on tensors that
// require grad run, warns at backward, and returns no gradient: silently wrong. This kernel raises
// instead, naming the differentiable entry point; with grad mode off or no input requiring grad it
// redispatches below autograd at the cost of one boxed call.
#pragma once

#include <ATen/core/dispatch/Dispatcher.h>
#include <ATen/core/LegacyTypeDispatch.h>
#include <c10/core/GradMode.h>
#include <torch/library.h>

#include <memory>

namespace elmo_fast {

class RefuseAutograd final : public c10::OperatorKernel {
 public:
  explicit RefuseAutograd(const char* use_instead) : use_instead_(use_instead) {}

  void operator()(const c10::OperatorHandle& op, c10::DispatchKeySet ks, torch::jit::Stack* stack) {
    if (c10::GradMode::is_enabled()) {
      const size_t n = op.schema().arguments().size();
      for (const c10::IValue& v : torch::jit::last(*stack, n)) {
        TORCH_CHECK(!requires_grad(v), op.schema().name(),
                    " is a raw kernel without autograd of its own, called on tensors that require grad; "
                    "for gradients call ", use_instead_, ", or run it under torch.no_grad()");
      }
    }
    at::AutoDispatchBelowADInplaceOrView guard;
    op.redispatchBoxed(ks & c10::after_ADInplaceOrView_keyset, stack);
  }

 private:
  static bool requires_grad(const c10::IValue& v) {
    if (v.isTensor()) return v.toTensor().requires_grad();
    if (v.isList()) {
      for (const c10::IValue& e : v.toListRef()) {
        if (e.isTensor() && e.toTensor().requires_grad()) return true;
      }
    }
    return false;
  }

  const char* use_instead_;
};

// m.impl("op", no_autograd("elmo_fast.ops...")) inside TORCH_LIBRARY_IMPL(elmo_fast, Autograd, m).
inline torch::CppFunction no_autograd(const char* use_instead) {
  return torch::CppFunction::makeFromBoxedFunctor(std::make_unique<RefuseAutograd>(use_instead));
}

}  // namespace elmo_fast
