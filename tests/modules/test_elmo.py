"""The eager reference Elmo against an independent float64 NumPy forward of the same HDF5 file."""

import numpy as np
import pytest
import torch

from elmo_fast import Elmo, batch_to_ids
from elmo_fast.testing import assert_close, random_tf_weights, small_options, write_hdf5
from tests.numpy_elmo import NumpyElmo

SENTENCES = [
    ["The", "cat", "sat", "on", "the", "mat", "."],
    [],
    ["Supercalifragilisticexpialidocious" * 2, "x"],  # a 68-character word (cut to 48 bytes)
    ["naïve", "café", "😀", "<S>", "</S>", ""],
    ["a"],
]


@pytest.fixture(scope="module", params=["relu", "tanh"])
def model_files(request, tmp_path_factory):
    opts = small_options(activation=request.param)
    weights = random_tf_weights(opts, scale=3.0, seed=1)
    d = tmp_path_factory.mktemp(f"elmo_{request.param}")
    write_hdf5(d / "weights.hdf5", weights)
    import json

    (d / "options.json").write_text(json.dumps(opts))
    return str(d / "options.json"), str(d / "weights.hdf5"), weights, opts


def _mix(layers, w, gamma):
    s = np.exp(w - w.max())
    s /= s.sum()
    return gamma * sum(si * layer for si, layer in zip(s, layers))


def test_elmo_matches_numpy_oracle(model_files):
    options_file, weight_file, weights, opts = model_files
    mix_w = [0.3, -0.7, 1.1]
    elmo = Elmo(options_file, weight_file, 2, dropout=0.0, stateful=False, backend="torch")
    with torch.no_grad():
        for k, v in enumerate(mix_w):
            elmo.scalar_mix_1.scalar_parameters[k].fill_(v)
        elmo.scalar_mix_1.gamma.fill_(1.7)
    out = elmo(batch_to_ids(SENTENCES))
    oracle = NumpyElmo(weights, opts)
    T = max(map(len, SENTENCES))
    for b, sent in enumerate(SENTENCES):
        layers = [layer[1:-1] for layer in oracle.layers(sent)]  # boundaries removed
        for rep, (w, gamma) in zip(out["elmo_representations"], [([0, 0, 0], 1.0), (mix_w, 1.7)]):
            expected = np.zeros((T, rep.shape[-1]))
            expected[: len(sent)] = _mix(layers, np.array(w, dtype=np.float64), gamma)
            assert_close(f"sentence {b}", torch.from_numpy(expected).float(), rep[b], atol=5e-5, rtol=1e-4)
        assert out["mask"][b].tolist() == [i < len(sent) for i in range(T)]
    assert oracle.fired["cell"] and oracle.fired["proj"], "weights too small: the clips never fired"


def test_keep_sentence_boundaries_and_layer_norm(model_files):
    options_file, weight_file, weights, opts = model_files
    elmo = Elmo(options_file, weight_file, 1, dropout=0.0, do_layer_norm=True, keep_sentence_boundaries=True,
                stateful=False)
    out = elmo(batch_to_ids(SENTENCES))
    oracle = NumpyElmo(weights, opts)
    T2 = max(map(len, SENTENCES)) + 2
    per_sent = [oracle.layers(s) for s in SENTENCES]
    n_layers = len(per_sent[0])
    mask = np.array([[t < len(s) + 2 for t in range(T2)] for s in SENTENCES])
    expected = np.zeros((len(SENTENCES), T2, 2 * opts["lstm"]["projection_dim"]))
    for k in range(n_layers):
        full = np.zeros_like(expected)
        for b, layers in enumerate(per_sent):
            full[b, : layers[k].shape[0]] = layers[k]
        vals = full[mask]
        mean, var = vals.mean(), vals.var()  # one mean, one population variance over the batch
        expected += (full - mean) / np.sqrt(var + 1e-13) / n_layers
    assert out["mask"].numpy().tolist() == mask.tolist()
    got = out["elmo_representations"][0]
    assert_close("layer-normed mix", torch.from_numpy(expected * mask[..., None]).float(), got * out["mask"][..., None], atol=5e-5, rtol=2e-4)


def test_sentence_alone_equals_sentence_in_padded_batch(model_files):
    options_file, weight_file, _, _ = model_files
    elmo = Elmo(options_file, weight_file, 1, dropout=0.0, stateful=False)
    batch = elmo(batch_to_ids(SENTENCES))["elmo_representations"][0]
    for b, sent in enumerate(SENTENCES):
        if not sent:
            assert batch[b].abs().max() == 0
            continue
        alone = elmo(batch_to_ids([sent]))["elmo_representations"][0][0]
        assert_close(f"sentence {b}", alone, batch[b, : len(sent)], atol=5e-5, rtol=1e-4)
        assert (batch[b, len(sent) :] == 0).all(), "padding must be exactly zero"


def test_stateful_carries_state_and_stateless_does_not(model_files):
    options_file, weight_file, _, _ = model_files
    ids = batch_to_ids(SENTENCES[:3])
    stateless = Elmo(options_file, weight_file, 1, dropout=0.0, stateful=False)
    stateful = Elmo(options_file, weight_file, 1, dropout=0.0)
    first = stateless(ids)["elmo_representations"][0]
    assert_close("stateless is repeatable", first, stateless(ids)["elmo_representations"][0], atol=0, rtol=0)
    s1 = stateful(ids)["elmo_representations"][0]
    assert_close("first stateful call starts from zero", first, s1, atol=1e-6, rtol=1e-6)
    s2 = stateful(ids)["elmo_representations"][0]
    assert (s2 - s1).abs().max() > 1e-3, "a stateful second call must see the carried state"
    # A smaller batch next uses the first rows' states; a reset restores the stateless result.
    stateful(batch_to_ids(SENTENCES[:1]))
    stateful.reset_states()
    assert_close("after reset_states", first, stateful(ids)["elmo_representations"][0], atol=1e-6, rtol=1e-6)


def test_stateful_state_follows_the_module_precision(model_files):
    """States carried from a run in another precision (the module cast since, or a GPU autocast run)
    are cast to the inputs' dtype: they used to reach the LSTM op as a dtype mismatch error."""
    options_file, weight_file, _, _ = model_files
    ids = batch_to_ids(SENTENCES[:3])
    elmo = Elmo(options_file, weight_file, 1, dropout=0.0)
    elmo(ids)
    elmo.double()
    second = elmo(ids)["elmo_representations"][0]
    assert second.dtype == torch.float64
    # the fp64 run started from the fp32 run's final states, merged into the carried (now fp64) ones
    fresh = Elmo(options_file, weight_file, 1, dropout=0.0).double()
    fresh(ids)
    # (the carried fp32 state differs from fp64 by ~5e-5 here; a dropped state by > 1e-3)
    assert_close("carried across the cast", fresh(ids)["elmo_representations"][0], second, atol=2e-4, rtol=2e-4)


def test_elmo_under_cpu_autocast(model_files):
    """Under torch.autocast (bf16 on the CPU) the eager module runs in mixed precision as eager
    PyTorch does, and the C++ backend computes fp32 (its kernels have no bf16 path), giving its
    fp32 numbers; both train (every gradient reaches the fp32 parameters) and carry their state
    into a call outside autocast. Both used to fail: the LSTM op rejected the char encoder's bf16
    output next to fp32 weights, and the C++ highway its bf16 GEMM result."""
    options_file, weight_file, _, _ = model_files
    ids = batch_to_ids(SENTENCES[:4])
    for backend in ("torch", "cpp"):
        elmo = Elmo(options_file, weight_file, 1, dropout=0.0, requires_grad=True, backend=backend)
        fp32 = Elmo(options_file, weight_file, 1, dropout=0.0, stateful=False, backend=backend)(ids)["elmo_representations"][0]
        with torch.autocast("cpu", dtype=torch.bfloat16):
            out = elmo(ids)["elmo_representations"][0]
        out.float().square().sum().backward()
        assert all(p.grad is not None and p.grad.dtype == torch.float32 for p in elmo.parameters() if p.requires_grad)
        rel_rms = ((out.float() - fp32).pow(2).mean() / fp32.pow(2).mean()).sqrt().item()
        assert rel_rms < (0.15 if backend == "torch" else 1e-5), (backend, rel_rms)  # eager: bf16 GEMMs
        assert elmo(ids)["elmo_representations"][0].dtype == torch.float32  # carried state, another precision


def test_torch_compile_matches_eager_without_warnings(model_files):
    """torch.compile(Elmo) gives the module's numbers on two batch shapes, and dynamo has nothing to
    warn about: the data-dependent input checks and the weight-copy cache are left untraced (traced,
    the cache recompiled at every call site until dynamo's recompile limit)."""
    import logging

    class Collect(logging.Handler):  # torch's loggers do not propagate to pytest's caplog
        def __init__(self):
            super().__init__(logging.WARNING)
            self.messages = []

        def emit(self, record):
            self.messages.append(record.getMessage()[:300])

    options_file, weight_file, _, _ = model_files
    elmo = Elmo(options_file, weight_file, 1, dropout=0.0, stateful=False).eval()
    compiled = torch.compile(elmo)
    handler, dynamo_log = Collect(), logging.getLogger("torch._dynamo")
    dynamo_log.addHandler(handler)
    try:
        with torch.no_grad():
            for batch in (SENTENCES[:3], SENTENCES[1:4] + [["more", "words", "here", "now", "."]], SENTENCES[:2]):
                ids = batch_to_ids(batch)
                assert_close("compiled", elmo(ids)["elmo_representations"][0], compiled(ids)["elmo_representations"][0],
                             atol=1e-5, rtol=1e-5)
    finally:
        dynamo_log.removeHandler(handler)
    assert handler.messages == []


def test_stateful_state_matches_numpy_carry(model_files):
    """Second call's initial state is the first call's final state (forward after </S>, backward after <S>)."""
    options_file, weight_file, weights, opts = model_files
    sents = [["a", "b", "c"], ["d", "e"]]
    elmo = Elmo(options_file, weight_file, 1, dropout=0.0, scalar_mix_parameters=[0.0, 0.0, 1e4])
    elmo(batch_to_ids(sents))
    second = elmo(batch_to_ids(sents))["elmo_representations"][0]
    oracle = NumpyElmo(weights, opts)
    n_layers = opts["lstm"]["n_layers"]
    for b, sent in enumerate(sents):
        x = oracle.token_vectors(["<S>"] + sent + ["</S>"])
        states = []
        f_in, b_in = x, x[::-1]
        for layer in range(n_layers):  # first call: record final states
            f_out, fh, fc = oracle._lstm(f_in, 0, layer)
            b_out, bh, bc = oracle._lstm(b_in, 1, layer)
            if layer:
                f_out, b_out = f_out + f_in, b_out + b_in
            states.append((fh, fc, bh, bc))
            f_in, b_in = f_out, b_out
        f_in, b_in = x, x[::-1]
        for layer in range(n_layers):  # second call from those states
            fh, fc, bh, bc = states[layer]
            f_out, _, _ = oracle._lstm(f_in, 0, layer, fh, fc)
            b_out, _, _ = oracle._lstm(b_in, 1, layer, bh, bc)
            if layer:
                f_out, b_out = f_out + f_in, b_out + b_in
            f_in, b_in = f_out, b_out
        top = np.concatenate([f_in, b_in[::-1]], axis=1)[1:-1]
        assert_close(f"stateful sentence {b}", torch.from_numpy(top).float(), second[b, : len(sent)], atol=2e-5, rtol=1e-4)


def test_vocab_to_cache_equals_character_path(model_files):
    options_file, weight_file, _, _ = model_files
    vocab = ["@@PADDING@@", "The", "cat", "sat", "on", "the", "mat", "."]  # id 0 is padding, as in AllenNLP
    elmo = Elmo(options_file, weight_file, 1, dropout=0.0, vocab_to_cache=vocab, stateful=False)
    sents = [["The", "cat", "sat"], ["the", "mat", ".", "on"]]
    chars = batch_to_ids(sents)
    word_ids = torch.tensor([[vocab.index(w) for w in s] + [0] * (4 - len(s)) for s in sents])
    via_chars = elmo(chars)["elmo_representations"][0]
    via_words = elmo(chars, word_ids)["elmo_representations"][0]
    # The two paths run the encoder's GEMMs on different row sets, whose fp32 rounding may differ.
    assert_close("cached vocabulary", via_chars, via_words, atol=1e-5, rtol=1e-5)


def test_vocab_to_cache_follows_allennlp(model_files, caplog):
    """AllenNLP's cached vocabulary: a trainable embedding when requires_grad=True with row 0 (padding)
    zeroed, a fall back to the character CNN for ids outside it, word_inputs without a cached
    vocabulary ignored with a warning; and the boundary vectors move with the module."""
    options_file, weight_file, _, _ = model_files
    vocab = ["@@PADDING@@", "The", "cat", "sat"]
    sents = [["The", "cat", "sat"], ["cat"]]
    chars = batch_to_ids(sents)
    word_ids = torch.tensor([[1, 2, 3], [2, 0, 0]])
    tuned = Elmo(options_file, weight_file, 1, requires_grad=True, dropout=0.0, vocab_to_cache=vocab, stateful=False)
    emb = tuned._elmo_lstm._word_embedding
    assert emb.weight.requires_grad and "_elmo_lstm._word_embedding.weight" in dict(tuned.named_parameters())
    assert torch.count_nonzero(emb.weight[0]) == 0 and torch.count_nonzero(emb.weight[1:]) > 0
    tuned(chars, word_ids)["elmo_representations"][0].sum().backward()
    assert torch.count_nonzero(emb.weight.grad[1:4].abs().sum(-1)) == 3
    assert torch.count_nonzero(emb.weight.grad[0]) == 0  # the padding row gets no gradient
    frozen = Elmo(options_file, weight_file, 1, dropout=0.0, vocab_to_cache=vocab, stateful=False)
    assert not frozen._elmo_lstm._word_embedding.weight.requires_grad
    assert "_bos_embedding" not in frozen.state_dict() and "_elmo_lstm._bos_embedding" not in frozen.state_dict()

    via_chars = frozen(chars)["elmo_representations"][0]
    with caplog.at_level("WARNING"):
        unknown = frozen(chars, torch.tensor([[1, 2, 7], [2, 0, 0]]))["elmo_representations"][0]
    assert "outside the cached vocabulary" in caplog.text
    torch.testing.assert_close(unknown, via_chars, rtol=0, atol=0)  # the character path itself
    caplog.clear()
    plain = Elmo(options_file, weight_file, 1, dropout=0.0, stateful=False)
    with caplog.at_level("WARNING"):
        ignored = plain(chars, word_ids)["elmo_representations"][0]
    assert "no cached vocabulary" in caplog.text
    torch.testing.assert_close(ignored, plain(chars)["elmo_representations"][0], rtol=0, atol=0)

    double = frozen.double()  # buffers follow the module (they are .to(device) on a GPU too)
    assert double._elmo_lstm._bos_embedding.dtype == torch.float64
    assert double(chars, word_ids)["elmo_representations"][0].dtype == torch.float64


def test_int32_char_ids_are_accepted(model_files):
    options_file, weight_file, _, _ = model_files
    elmo = Elmo(options_file, weight_file, 1, dropout=0.0, stateful=False)
    ids = batch_to_ids(SENTENCES)
    expected = elmo(ids)["elmo_representations"][0]
    torch.testing.assert_close(elmo(ids.int())["elmo_representations"][0], expected, rtol=0, atol=0)
    with pytest.raises(TypeError, match="integer"):
        elmo(ids.float())
    with pytest.raises(TypeError, match="batch_to_ids"):
        elmo([["a", "list"], ["of", "tokens"]])


def test_higher_rank_inputs_are_reshaped(model_files):
    options_file, weight_file, _, _ = model_files
    elmo = Elmo(options_file, weight_file, 1, dropout=0.0, stateful=False)
    ids = batch_to_ids(SENTENCES[:4])
    flat = elmo(ids)
    nested = elmo(ids.view(2, 2, *ids.shape[1:]))
    assert nested["mask"].shape == (2, 2, ids.shape[1])
    assert_close("4-d input", flat["elmo_representations"][0], nested["elmo_representations"][0].view_as(flat["elmo_representations"][0]), atol=1e-6, rtol=1e-6)


def test_gradients_flow_to_mix_and_not_to_frozen_weights(model_files):
    options_file, weight_file, _, _ = model_files
    elmo = Elmo(options_file, weight_file, 1, dropout=0.0, stateful=False)
    elmo(batch_to_ids(SENTENCES))["elmo_representations"][0].sum().backward()
    assert elmo.scalar_mix_0.gamma.grad is not None
    assert all(p.grad is None for p in elmo._elmo_lstm.parameters())
    tuned = Elmo(options_file, weight_file, 1, requires_grad=True, dropout=0.0, stateful=False)
    tuned(batch_to_ids(SENTENCES))["elmo_representations"][0].sum().backward()
    assert all(p.grad is not None for p in tuned._elmo_lstm.parameters())


def test_all_empty_batch_and_empty_batch(model_files):
    options_file, weight_file, _, _ = model_files
    elmo = Elmo(options_file, weight_file, 1, dropout=0.0, stateful=False)
    out = elmo(batch_to_ids([[], []]))
    assert out["elmo_representations"][0].shape == (2, 0, 2 * 12)
    assert out["mask"].shape == (2, 0)
    with pytest.raises(ValueError, match="empty batch"):
        elmo(torch.zeros(0, 3, 50, dtype=torch.long))
    with pytest.raises(ValueError, match="batch_to_ids"):
        elmo(torch.zeros(2, 3, dtype=torch.long))


def test_state_dict_keys_match_allennlp():
    """The exact key set AllenNLP's Elmo has for this architecture (2 layers, 3 filters, 2 highways)."""
    elmo = Elmo(small_options(), None, 2)
    tok = "_elmo_lstm._token_embedder."
    expected = [tok + "_char_embedding_weights"]
    for i in range(3):
        expected += [tok + f"char_conv_{i}.weight", tok + f"char_conv_{i}.bias"]
    for k in range(2):
        expected += [tok + f"_highways._layers.{k}.weight", tok + f"_highways._layers.{k}.bias"]
    expected += [tok + "_projection.weight", tok + "_projection.bias"]
    for layer in range(2):
        for d in ("forward", "backward"):
            p = f"_elmo_lstm._elmo_lstm.{d}_layer_{layer}."
            expected += [p + "input_linearity.weight", p + "state_linearity.weight", p + "state_linearity.bias",
                         p + "state_projection.weight"]
    for m in range(2):
        expected += [f"scalar_mix_{m}.gamma"] + [f"scalar_mix_{m}.scalar_parameters.{k}" for k in range(3)]
    assert sorted(elmo.state_dict()) == sorted(expected)
    # and such a state_dict loads unchanged into a fresh module
    other = Elmo(small_options(), None, 2)
    other.load_state_dict(elmo.state_dict())


def test_bf16_gemm_inference_option(model_files):
    """Elmo.set_gemm_dtype(bf16): every GEMM of the char encoder and the LSTM in bf16, fp32 elsewhere.
    Within 2x the error of the eager model run in bf16, padding still exactly 0,
    inference only, and None restores the fp32 numbers exactly."""
    options_file, weight_file, weights, opts = model_files
    elmo = Elmo(options_file, weight_file, 1, dropout=0.0, stateful=False)
    ids = batch_to_ids(SENTENCES)
    with torch.no_grad():
        ref = elmo(ids)["elmo_representations"][0]
        elmo.set_gemm_dtype(torch.bfloat16)
        out = elmo(ids)
        rep = out["elmo_representations"][0]
    assert rep.dtype == torch.float32 and not torch.equal(rep, ref), "bf16 path not taken"
    # These weights saturate the LSTM and fire both clips, which amplifies any rounding: the bound is
    # relative to the eager model run entirely in bf16 (measured: 0.045 vs 0.055 relative RMS).
    with torch.no_grad():
        low = Elmo(options_file, weight_file, 1, dropout=0.0, stateful=False, backend="torch").to(torch.bfloat16)(ids)
    rel_rms = ((rep - ref).pow(2).mean() / ref.pow(2).mean()).sqrt().item()
    rel_rms_low = ((low["elmo_representations"][0].float() - ref).pow(2).mean() / ref.pow(2).mean()).sqrt().item()
    assert 0 < rel_rms <= 2 * rel_rms_low, (rel_rms, rel_rms_low)
    assert (rep[~out["mask"]] == 0).all()
    tuned = Elmo(options_file, weight_file, 1, requires_grad=True, dropout=0.0)
    tuned.set_gemm_dtype(torch.bfloat16)
    with pytest.raises(RuntimeError, match="inference-only"):
        tuned(ids)
    elmo.set_gemm_dtype(None)
    with torch.no_grad():
        assert torch.equal(elmo(ids)["elmo_representations"][0], ref)



@pytest.mark.parametrize("native", [True, False])
def test_bf16_option_warns_once_where_the_cpu_emulates_bf16(monkeypatch, native):
    """On a CPU without avx512_bf16/AMX the bf16-GEMM option is slower than fp32 (emulated): one
    RuntimeWarning that says so, however many modules are switched; none on a CPU that has it."""
    import warnings

    from elmo_fast import _backend

    monkeypatch.setattr(_backend, "cpu_has_native_bf16", lambda: native)
    monkeypatch.setattr(_backend, "_bf16_warned", False)
    elmo = Elmo(small_options(), None, 1)
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        elmo.set_gemm_dtype(torch.bfloat16)
        elmo.set_gemm_dtype(torch.bfloat16)
        elmo.set_gemm_dtype(None)
    emulated = [w for w in seen if issubclass(w.category, RuntimeWarning) and "emulated" in str(w.message)]
    assert len(emulated) == (0 if native else 1), [str(w.message) for w in seen]


def test_bilstm_directions_run_concurrently_and_match_the_split_path(monkeypatch):
    """On 2 threads each layer's two directions run at once (lstm_proj_pair); carried state, the
    outputs and every gradient must equal running them one after the other."""
    from dataclasses import replace

    import elmo_fast.modules.lstm as lstm_module
    from elmo_fast.modules.lstm import ElmoLstm
    from elmo_fast.ops.lstm_proj.plan import plan_lstm_proj

    old = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        torch.manual_seed(0)
        model = ElmoLstm(6, 6, 10, 2, True, memory_cell_clip_value=3.0, state_projection_clip_value=3.0, stateful=True)
        x = torch.randn(4, 7, 6)
        mask = torch.arange(7)[None] < torch.tensor([7, 1, 4, 6])[:, None]
        results = []
        for pair in (True, False):
            monkeypatch.setattr(lstm_module, "plan_lstm_proj", lambda *a, _p=pair, **k: replace(plan_lstm_proj(*a, **k), pair=_p))
            model.reset_states()
            model(x, mask)  # carried into the second call
            xi = x.clone().requires_grad_()
            out = model(xi, mask)
            grads = torch.autograd.grad(out, [xi, *model.parameters()], torch.ones_like(out))
            results.append((out, *grads))
        for i, (a, b) in enumerate(zip(*results)):
            assert_close(f"tensor {i}", b, a)
    finally:
        torch.set_num_threads(old)
