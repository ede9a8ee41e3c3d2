"""The biLM's loss pieces: log-uniform sampler, sampled and full softmax, and the carried state of
both directions (the design that lets the backward LM see contiguous text)."""

import math

import pytest
import torch

from elmo_fast.testing import assert_close, small_options
from elmo_fast.train.data import Batch
from elmo_fast.train.model import BidirectionalLM, LogUniformSampler, full_softmax_loss, sampled_softmax_loss


def test_log_uniform_sampler_distribution():
    V, n = 50, 20000
    s = LogUniformSampler(V, seed=3)
    g = torch.Generator().manual_seed(0)
    probs = s.log_prob(torch.arange(V)).exp()
    assert abs(float(probs.sum()) - 1.0) < 1e-9 and bool((probs[:-1] > probs[1:]).all())
    # draws with replacement follow P(k); the inclusion probability matches a Monte-Carlo estimate
    u = torch.rand(n, generator=g, dtype=torch.float64)
    ids = (torch.exp(u * math.log(V + 1)).floor().long() - 1).clamp(0, V - 1)
    freq = torch.bincount(ids, minlength=V).double() / n
    assert float((freq - probs).abs().max()) < 0.01
    draws, trials = 7, 4000
    hits = torch.zeros(V, dtype=torch.float64)
    for t in range(trials):
        got, logq = s.sample(draws, step=t)
        assert got.unique().numel() == got.numel()
        hits[got] += 1
        assert_close("logq", s.log_inclusion(got, draws), logq)
    assert float((hits / trials - s.log_inclusion(torch.arange(V), draws).double().exp()).abs().max()) < 0.03
    # negatives depend only on (seed, step): identical on every rank and after a resume
    assert torch.equal(s.sample(64, 11)[0], LogUniformSampler(V, seed=3).sample(64, 11)[0])
    assert not torch.equal(s.sample(64, 11)[0], s.sample(64, 12)[0])


@pytest.mark.parametrize("N, V, P", [(1, 5, 3), (37, 23, 8)])
def test_sampled_softmax_with_every_word_is_the_full_softmax(N, V, P):
    """With all ids as negatives and no correction, removing the accidental hit leaves exactly the
    full softmax; outputs and gradients must agree."""
    h = torch.randn(N, P, dtype=torch.float64, requires_grad=True)
    w = torch.randn(V, P, dtype=torch.float64, requires_grad=True)
    b = torch.randn(V, dtype=torch.float64, requires_grad=True)
    t = torch.randint(0, V, (N,))
    ids = torch.arange(V)
    ref = torch.nn.functional.cross_entropy(h @ w.T + b, t, reduction="sum")
    out = sampled_softmax_loss(h, t, w, b, ids, torch.zeros(V, dtype=torch.float64), torch.zeros(N, dtype=torch.float64))
    full = full_softmax_loss(h, t, w, b, chunk=4)
    assert_close("loss", ref, out.double())
    assert_close("full", ref, full.double())
    g = torch.randn(())
    grads_ref = torch.autograd.grad(ref * g, (h, w, b))
    grads = torch.autograd.grad(out * g, (h, w, b))
    for name, r, o in zip(("h", "w", "b"), grads_ref, grads):
        assert_close(name, r, o)
    rows = sampled_softmax_loss(h, t, w, b, ids, torch.zeros(V, dtype=torch.float64), torch.zeros(N, dtype=torch.float64),
                                reduction="none")
    assert_close("per row", torch.nn.functional.cross_entropy(h @ w.T + b, t, reduction="none"), rows)
    with pytest.raises(ValueError, match="reduction must be"):
        sampled_softmax_loss(h, t, w, b, ids, torch.zeros(V), torch.zeros(N), reduction="mean")


def test_sampled_softmax_correction_is_applied():
    """The correction subtracts log Q from every logit: shifting all logQ by a constant changes nothing,
    changing one negative's logQ changes the loss exactly as its logit would."""
    torch.manual_seed(1)
    h, w, b = torch.randn(6, 4), torch.randn(10, 4), torch.randn(10)
    t = torch.tensor([0, 1, 2, 3, 4, 5])
    ids = torch.tensor([6, 7, 8, 9])
    lq, tq = torch.randn(4), torch.randn(6)
    base = sampled_softmax_loss(h, t, w, b, ids, lq, tq)
    assert_close("shift", base, sampled_softmax_loss(h, t, w, b, ids, lq + 2.5, tq + 2.5))
    b2 = b.clone()
    b2[7] += 0.7
    lq2 = lq.clone()
    lq2[1] -= 0.7
    assert_close("logq", sampled_softmax_loss(h, t, w, b2, ids, lq, tq), sampled_softmax_loss(h, t, w, b, ids, lq2, tq))


def _batch(char_ids, f_idx, b_idx, V, g):
    B, T = f_idx.shape
    return Batch(char_ids, f_idx, b_idx, torch.randint(0, V, (B, T), generator=g), torch.randint(0, V, (B, T), generator=g),
                 torch.ones(B, T, dtype=torch.bool), torch.ones(B, T, dtype=torch.bool))


def test_carried_state_equals_one_long_window():
    """Forward: window 1 then window 2 (carried state) = one window over both. Backward: the later
    window first, its state carried into the earlier one = the backward LSTM over both."""
    from elmo_fast.testing import random_char_ids

    torch.manual_seed(0)
    V, B, T = 11, 3, 5
    model = BidirectionalLM(small_options(), V, dropout=0.0).double()
    chars = random_char_ids(17, seed=1)
    g = torch.Generator().manual_seed(0)
    text = torch.randint(0, 17, (B, 2 * T), generator=g)
    first, second = text[:, :T], text[:, T:]
    long = _batch(chars, text, text, V, g)
    f_long, b_long, _ = model.encode(long)
    f1, _, (fs, _) = model.encode(_batch(chars, first, first, V, g))
    f2, _, _ = model.encode(_batch(chars, second, second, V, g), (fs, None))
    assert_close("forward", f_long, torch.cat([f1, f2], 1))
    _, b2, (_, bs) = model.encode(_batch(chars, second, second, V, g))
    _, b1, _ = model.encode(_batch(chars, first, first, V, g), (None, bs))
    assert_close("backward", b_long, torch.cat([b1, b2], 1))


def test_loss_reaches_every_parameter():
    from elmo_fast.testing import random_char_ids

    V, B, T = 13, 2, 4
    model = BidirectionalLM(small_options(n_layers=2), V, dropout=0.1, n_negative=5)
    g = torch.Generator().manual_seed(0)
    batch = _batch(random_char_ids(9), torch.randint(0, 9, (B, T), generator=g), torch.randint(0, 9, (B, T), generator=g), V, g)
    batch.fwd_targets[0, 0] = -1  # unscored targets are skipped
    (lf, lb, nf, nb), state = model(batch, step=0)
    assert int(nf) == B * T - 1 and int(nb) == B * T
    assert torch.isfinite(lf) and torch.isfinite(lb)
    (lf + lb).backward()
    for name, p in model.named_parameters():
        assert p.grad is not None and bool(p.grad.abs().sum() > 0), f"no gradient reaches {name}"
    assert len(state) == 2 and len(state[0]) == 2
    with torch.no_grad():
        (ef, eb, _, _), _ = model.eval()(batch)  # full softmax
    assert float(ef) / int(nf) < math.log(V) * 3


def test_pretraining_directions_run_concurrently_and_match(monkeypatch):
    """encode() runs each layer's forward and backward LM together on 2 threads (lstm_proj_pair,
    each direction with its own lengths); same outputs, states and gradients as one stack after
    the other."""
    from dataclasses import replace

    import elmo_fast.modules.lstm as lstm_module
    from elmo_fast.ops.lstm_proj.plan import plan_lstm_proj
    from elmo_fast.testing import random_char_ids

    old = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        torch.manual_seed(0)
        V, B, T = 11, 3, 6
        model = BidirectionalLM(small_options(n_layers=2), V, dropout=0.0)
        g = torch.Generator().manual_seed(1)
        batch = _batch(random_char_ids(9), torch.randint(0, 9, (B, T), generator=g), torch.randint(0, 9, (B, T), generator=g), V, g)
        batch.bwd_mask[1, 4:] = False  # the two directions get different lengths
        results = []
        for pair in (True, False):
            monkeypatch.setattr(lstm_module, "plan_lstm_proj", lambda *a, _p=pair, **k: replace(plan_lstm_proj(*a, **k), pair=_p))
            f, b, (fs, bs) = model.encode(batch)
            grads = torch.autograd.grad((f.sum() + 2 * b.sum()), list(model.parameters()), allow_unused=True)
            states = [t for st in (fs, bs) for hc in st for t in hc]
            results.append((f, b, *states, *(gr for gr in grads if gr is not None)))
        assert len(results[0]) == len(results[1])
        for i, (a, b) in enumerate(zip(*results)):
            assert_close(f"tensor {i}", b, a)
    finally:
        torch.set_num_threads(old)



def test_training_gradients_are_reproducible_on_two_threads():
    """Two identical steps on 2 threads give bit-identical gradients for every parameter. The
    token gather (emb[index]) and the softmax-row gather (weight[rows]) used to go through advanced
    indexing, whose CPU backward accumulates with atomics across threads: the char encoder's and
    the softmax's gradients then differed run to run, and so did whole pretraining runs."""
    from elmo_fast.testing import random_char_ids

    old = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        torch.manual_seed(0)
        V, U, B, T = 2000, 300, 64, 20
        model = BidirectionalLM(small_options(n_layers=1, dim=64, proj=128), V, dropout=0.0, n_negative=256)
        g = torch.Generator().manual_seed(0)
        # Zipf-like repeats, as in text: many rows of the gathers hit the same few tokens.
        f_idx = (torch.rand(B, T, generator=g) ** 3 * U).long()
        batch = _batch(random_char_ids(U, seed=2), f_idx, f_idx.flip(1), V, g)

        def grads():
            model.zero_grad(set_to_none=True)
            (lf, lb, nf, nb), _ = model(batch, step=3)
            (lf / nf + lb / nb).backward()
            return {n: p.grad.clone() for n, p in model.named_parameters()}

        first = grads()
        for _ in range(8):
            again = grads()
            assert [n for n in first if not torch.equal(first[n], again[n])] == []
    finally:
        torch.set_num_threads(old)
