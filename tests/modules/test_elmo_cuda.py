"""The whole Elmo on a CUDA GPU (default backend: the CUDA or Triton kernels) against the eager
reference on the CPU: outputs and the gradients of a fine-tuning step, fp32 and bf16. Skipped,
with the reason, without a GPU; benchmarks/gpu_session.sh runs it on one."""

import json

import pytest
import torch

from elmo_fast import Elmo, batch_to_ids
from elmo_fast._backend import available_backends
from elmo_fast.testing import assert_close, random_tf_weights, small_options, write_hdf5

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")

SENTENCES = [["The", "cat", "sat", "on", "the", "mat", "."], ["a"], ["Supercalifragilistic" * 3, "x", "the", "."],
             ["naïve", "café", "😀", "the"], []]


@pytest.fixture(scope="module")
def model_files(tmp_path_factory):
    opts = small_options()
    d = tmp_path_factory.mktemp("elmo_cuda")
    write_hdf5(d / "weights.hdf5", random_tf_weights(opts, scale=3.0, seed=2))
    (d / "options.json").write_text(json.dumps(opts))
    return str(d / "options.json"), str(d / "weights.hdf5")


@pytest.mark.parametrize("backend", [b for b in ("cuda", "triton") if torch.cuda.is_available() and b in available_backends("cuda")] or ["none"])
def test_elmo_on_gpu_matches_cpu_reference(model_files, backend, exact_fp32):
    if backend == "none":
        pytest.fail("a CUDA GPU is visible but neither the CUDA extension nor Triton is usable on it")
    ids = batch_to_ids(SENTENCES)
    kw = dict(num_output_representations=2, dropout=0.0, stateful=False, requires_grad=True)
    ref = Elmo(*model_files, backend="torch", **kw)
    fast = Elmo(*model_files, backend=backend, **kw).cuda()
    a, b = ref(ids), fast(ids.cuda())
    assert torch.equal(a["mask"], b["mask"].cpu())
    for k in range(2):
        assert_close(f"representation {k}", a["elmo_representations"][k], b["elmo_representations"][k].cpu(), 2e-4, 2e-4)
    probe = torch.randn_like(a["elmo_representations"][0])
    torch.autograd.backward(a["elmo_representations"][0], probe)
    torch.autograd.backward(b["elmo_representations"][0], probe.cuda())
    grads = dict(fast.named_parameters())
    for name, p in ref.named_parameters():
        if p.grad is not None:
            assert_close(f"grad {name}", p.grad, grads[name].grad.cpu(), 1e-3, 1e-3)


def test_elmo_bf16_on_gpu_is_close(model_files):
    ids = batch_to_ids(SENTENCES)
    ref = Elmo(*model_files, 1, dropout=0.0, stateful=False, backend="torch")
    low = Elmo(*model_files, 1, dropout=0.0, stateful=False).cuda().to(torch.bfloat16)
    with torch.no_grad():
        a = ref(ids)["elmo_representations"][0]
        b = low(ids.cuda())["elmo_representations"][0].float().cpu()
    rel_rms = ((a - b).pow(2).mean() / a.pow(2).mean()).sqrt().item()
    assert rel_rms < 5e-2, rel_rms


@pytest.mark.parametrize("backend", [b for b in ("cuda", "triton") if torch.cuda.is_available() and b in available_backends("cuda")] or ["none"])
def test_elmo_under_bf16_autocast_on_gpu(model_files, backend, monkeypatch):
    """A fine-tuning step under bf16 autocast (as GPU pretraining runs): the fused ops run in bf16
    (seen by the LSTM op), the output is within bf16 error of the fp32 reference, and every
    gradient that the fp32 run has reaches the fp32 parameters, finite."""
    if backend == "none":
        pytest.skip("no GPU backend built")
    from elmo_fast.ops.lstm_proj import function as lstm_function

    seen = []
    impl = lstm_function._fwd_impl
    monkeypatch.setattr(lstm_function, "_fwd_impl", lambda b: (lambda *a: seen.append(a[0].dtype) or impl(b)(*a)))
    ids = batch_to_ids(SENTENCES)
    ref = Elmo(*model_files, 1, dropout=0.0, stateful=False, requires_grad=True, backend="torch")
    gpu = Elmo(*model_files, 1, dropout=0.0, stateful=False, requires_grad=True, backend=backend).cuda()
    a = ref(ids)["elmo_representations"][0]
    with torch.autocast("cuda", dtype=torch.bfloat16):
        b = gpu(ids.cuda())["elmo_representations"][0]
    assert seen and set(seen) == {torch.bfloat16}, seen
    rel_rms = ((a.detach() - b.detach().float().cpu()).pow(2).mean() / a.detach().pow(2).mean()).sqrt().item()
    assert rel_rms < 5e-2, rel_rms
    a.square().sum().backward()
    b.float().square().sum().backward()
    for (name, p), q in zip(ref.named_parameters(), gpu.parameters()):
        if p.grad is not None:
            assert q.grad is not None and q.grad.dtype == torch.float32 and torch.isfinite(q.grad).all(), name


def test_cached_vocabulary_moves_to_the_gpu(model_files, exact_fp32):
    """vocab_to_cache built on the CPU, then .cuda(): the boundary vectors are buffers and follow
    (as plain attributes they stayed on the CPU and the eos write mixed devices)."""
    vocab = ["@@PADDING@@", "The", "cat", "sat"]
    ids = batch_to_ids([["The", "cat", "sat"], ["cat"]])
    words = torch.tensor([[1, 2, 3], [2, 0, 0]])
    ref = Elmo(*model_files, 1, dropout=0.0, vocab_to_cache=vocab, stateful=False, backend="torch")
    gpu = Elmo(*model_files, 1, dropout=0.0, vocab_to_cache=vocab, stateful=False).cuda()
    assert gpu._elmo_lstm._bos_embedding.is_cuda
    assert_close("cached vocabulary on the GPU", ref(ids, words)["elmo_representations"][0],
                 gpu(ids.cuda(), words.cuda())["elmo_representations"][0].cpu(), 2e-4, 2e-4)
