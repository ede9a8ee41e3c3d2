"""`elmo_fast.ElmoEmbedder` against AllenNLP 0.9's ElmoEmbedder (transcribed in allennlp09_embedder.py, over
the eager stateful biLM): the same shapes, dtypes, state carried across calls, empty sentences and files."""

import io
import numpy as np
import pytest
import torch

from elmo_fast import ElmoEmbedder
from elmo_fast.options import save_options
from elmo_fast.testing import assert_close, random_tf_weights, small_options, write_hdf5

from .allennlp09_embedder import AllenNLPElmoEmbedder, read_allennlp_hdf5

P = 7
L = 3  # n_layers + 1
ATOL, RTOL = 2e-5, 1e-4
SENTENCES = ["The cat sat on the mat .", "Hello", "A much longer sentence , with commas and 12,000 numbers in it .",
             "Short one .", "Hello", "Über naïve café £5", "x"]


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    d = tmp_path_factory.mktemp("elmo")
    opts = small_options(dim=20, proj=P)
    save_options(opts, d / "options.json")
    # unit scale: with clipping-scale weights (3x) the carried state is chaotic, and float32 rounding
    # (the fused kernels' or a different batch composition's) grows to O(1) within a few calls
    write_hdf5(d / "weights.hdf5", random_tf_weights(opts, seed=3))
    return str(d / "options.json"), str(d / "weights.hdf5")


def _same(name, ref, got):
    assert isinstance(got, np.ndarray) and got.dtype == np.float32, (name, type(got), getattr(got, "dtype", None))
    assert got.shape == ref.shape, (name, got.shape, ref.shape)
    assert_close(name, torch.from_numpy(np.asarray(ref, dtype=np.float32)), torch.from_numpy(got), atol=ATOL, rtol=RTOL)


def test_batch_to_embeddings_shapes_dtypes_and_values(model):
    ours, ref = ElmoEmbedder(*model), AllenNLPElmoEmbedder(*model)
    batch = [["a", "b", "c"], [], ["longer", "one", "with", "five", "words"]]
    acts, mask = ours.batch_to_embeddings(batch)
    r_acts, r_mask = ref.batch_to_embeddings(batch)
    assert acts.shape == (3, L, 5, 2 * P) and acts.dtype == torch.float32
    assert mask.dtype == torch.long and mask.tolist() == r_mask.tolist() == [[1, 1, 1, 0, 0], [0] * 5, [1] * 5]
    assert_close("activations", r_acts, acts, atol=ATOL, rtol=RTOL)
    assert (acts[1] == 0).all() and (acts[0, :, 3:] == 0).all()


def test_state_carries_across_calls_like_allennlp(model):
    """The same call sequence on both: batches growing, shrinking, with empty sentences and a lone [[]]
    (which runs nothing), so every case of AllenNLP's state merge is taken."""
    ours, ref = ElmoEmbedder(*model), AllenNLPElmoEmbedder(*model)
    calls = [
        ("embed_sentence", (["Hello", "world"],)),
        ("embed_batch", ([["a", "b", "c"], ["d"], []],)),  # more rows than stored: new rows start at zero
        ("embed_batch", ([[]],)),  # runs nothing: the state stays
        ("embed_batch", ([["x", "y"]],)),  # fewer rows: the others keep theirs
        ("embed_batch", ([[], ["p", "q", "r", "s"], ["t"], ["u", "v"]],)),  # the empty row runs as <S> </S>
        ("embed_sentences", ([s.split() for s in SENTENCES], 3)),
        ("embed_sentence", (["Hello", "world"],)),
    ]
    for n, (method, args) in enumerate(calls):
        got = getattr(ours, method)(*args)
        want = getattr(ref, method)(*args)
        if method == "embed_sentence":
            got, want = [got], [want]
        got, want = list(got), list(want)
        assert len(got) == len(want)
        for i, (g, w) in enumerate(zip(got, want)):
            _same(f"call {n} ({method}) sentence {i}", w, g)
    first, last = ours.embed_sentence(["Hello", "world"]), None
    ours.reset_states()
    last = ours.embed_sentence(["Hello", "world"])
    fresh = ElmoEmbedder(*model).embed_sentence(["Hello", "world"])
    assert not np.allclose(first, last, atol=1e-4)  # the state did carry
    np.testing.assert_array_equal(last, fresh)  # and reset_states() forgets it


def test_empty_sentences(model):
    ours = ElmoEmbedder(*model)
    for batch in ([[]], [["a"], []], [[], []]):
        out = ours.embed_batch(batch)
        for s, e in zip(batch, out):
            if not s:
                assert e.shape == (L, 0, 2 * P) and e.dtype == np.float32
    assert ours.embed_sentence([]).shape == (L, 0, 2 * P)
    assert ours.embed_batch([]) == []
    states = ours.elmo_bilm._elmo_lstm._states
    ours.embed_batch([[]])
    assert ours.elmo_bilm._elmo_lstm._states is states  # a lone [[]] runs nothing
    ours.embed_batch([["a"], []])
    assert ours.elmo_bilm._elmo_lstm._states is not states


def test_stateless_vectors_do_not_depend_on_the_batch(model):
    ee = ElmoEmbedder(*model, stateful=False)
    sents = [s.split() for s in SENTENCES]
    alone = [ee.embed_sentence(s) for s in sents]
    together = list(ee.embed_sentences(reversed(sents), batch_size=3))[::-1]
    ref = AllenNLPElmoEmbedder(*model)
    for i, s in enumerate(sents):
        ref.elmo_bilm.reset_states()
        _same(f"sentence {i} alone", ref.embed_sentence(s), alone[i])
        _same(f"sentence {i} in a batch", alone[i], together[i])


@pytest.mark.parametrize("output_format", ["all", "top", "average"])
@pytest.mark.parametrize("keys", ["index", "sentence", "forget"])
def test_embed_file_matches_allennlp(model, tmp_path, output_format, keys):
    lines = SENTENCES if keys != "sentence" else list(dict.fromkeys(SENTENCES))  # sentence keys must be unique
    text = "\n".join(lines) + "\n"
    kw = dict(forget_sentences=keys == "forget", use_sentence_keys=keys == "sentence")
    ref_path, our_path = tmp_path / "ref.hdf5", tmp_path / "ours.hdf5"
    AllenNLPElmoEmbedder(*model).embed_file(io.StringIO(text), str(ref_path), output_format, 3, **kw)
    src = tmp_path / "in.txt"
    src.write_text(text, encoding="utf-8")
    n = ElmoEmbedder(*model).embed_file(str(src), str(our_path), output_format, 3, progress=False, **kw)
    assert n == len(lines)
    ref, ref_index = read_allennlp_hdf5(ref_path)
    ours, our_index = read_allennlp_hdf5(our_path)
    assert our_index == ref_index
    if keys == "index":
        assert our_index["Hello"] == "4"  # a repeated sentence maps to its last line, as in AllenNLP
    assert sorted(ours) == sorted(ref)
    for k in ref:
        _same(f"{keys} {output_format} {k!r}", ref[k], ours[k])
    # an open file, as AllenNLP's embed_file takes (and closes)
    f = io.StringIO(text)
    ElmoEmbedder(*model).embed_file(f, str(tmp_path / "io.hdf5"), output_format, 3, progress=False, **kw)
    assert f.closed and sorted(read_allennlp_hdf5(tmp_path / "io.hdf5")[0]) == sorted(ref)


def test_embed_file_errors_before_writing(model, tmp_path):
    ee = ElmoEmbedder(*model)
    out = tmp_path / "o.hdf5"
    bad = tmp_path / "bad.txt"
    bad.write_text("one sentence\n\nanother\n")
    with pytest.raises(ValueError, match=r"line 2 is empty.*remove the blank lines"):
        ee.embed_file(str(bad), str(out))
    dup = tmp_path / "dup.txt"
    dup.write_text("a b\nc\na b\n")
    with pytest.raises(ValueError, match=r"line 3 repeats an earlier sentence.*drop --use-sentence-keys"):
        ee.embed_file(str(dup), str(out), use_sentence_keys=True)
    slash = tmp_path / "slash.txt"
    slash.write_text("a/b c\n")
    with pytest.raises(ValueError, match="cannot be an HDF5 key"):
        ee.embed_file(str(slash), str(out), use_sentence_keys=True)
    with pytest.raises(FileNotFoundError, match="does not exist"):
        ee.embed_file(str(tmp_path / "missing.txt"), str(out))
    with pytest.raises(FileNotFoundError, match=r"does not exist; create it first \(mkdir -p"):
        ee.embed_file(str(dup), str(tmp_path / "no" / "such" / "o.hdf5"))
    with pytest.raises(ValueError, match="output_format must be one of"):
        ee.embed_file(str(dup), str(out), "bottom")
    with pytest.raises(ValueError, match="stateless embedder"):
        ee.embed_file(str(dup), str(out), max_tokens_per_batch=100)
    assert list(tmp_path.iterdir()) and not any(p.suffix in (".hdf5", ".partial") for p in tmp_path.iterdir())
    assert ee.elmo_bilm._elmo_lstm._states is None  # nothing ran


def test_constructor_arguments(model, monkeypatch):
    opts, weights = model
    with pytest.raises(ValueError, match="without weight_file"):
        ElmoEmbedder(opts)
    with pytest.raises(ValueError, match="cuda_device must be an integer"):
        ElmoEmbedder(opts, weights, cuda_device="0")
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="no CUDA GPU"):
            ElmoEmbedder(opts, weights, cuda_device=0)
    # no files: AllenNLP's default model, resolved by the published-model registry (its download stubbed)
    import elmo_fast.pretrained

    asked = []
    monkeypatch.setattr(elmo_fast.pretrained, "resolve_model", lambda name: asked.append(name) or (opts, weights))
    a = ElmoEmbedder().embed_sentence(["x"])
    b = ElmoEmbedder("small").embed_sentence(["x"])
    assert asked == ["original", "small"]
    np.testing.assert_array_equal(a, ElmoEmbedder(opts, weights).embed_sentence(["x"]))
    np.testing.assert_array_equal(a, b)
    ElmoEmbedder(opts, weights)  # paths never ask the registry
    assert asked == ["original", "small"]
    monkeypatch.undo()
    with pytest.raises(ValueError, match=r"unknown ELMo model 'orignal'.*published models: small, medium, original"):
        ElmoEmbedder("orignal")
