"""The lower-level modules under AllenNLP's names take AllenNLP's positional arguments and shapes,
so code written against `allennlp.modules.elmo` / `elmo_lstm` / `lstm_cell_with_projection` means
the same thing here (or fails loudly where a feature is missing)."""

import json

import pytest
import torch

from elmo_fast import ElmoBiLm, batch_to_ids, save_checkpoint
from elmo_fast.modules import ElmoCharacterEncoder, ElmoLstm, LstmCellWithProjection
from elmo_fast.ops.lstm_proj import lstm_proj
from elmo_fast.testing import assert_close, random_char_ids, random_tf_weights, small_options, write_hdf5


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    d = tmp_path_factory.mktemp("api")
    opts = small_options()
    write_hdf5(d / "weights.hdf5", random_tf_weights(opts, scale=2.0, seed=4))
    (d / "options.json").write_text(json.dumps(opts))
    return str(d / "options.json"), str(d / "weights.hdf5")


def test_allennlp_import_path():
    from elmo_fast.modules.elmo import Elmo, _ElmoBiLm, _ElmoCharacterEncoder  # noqa: F401
    from elmo_fast.modules.elmo import batch_to_ids as b2i

    assert b2i is batch_to_ids and _ElmoBiLm is ElmoBiLm and _ElmoCharacterEncoder is ElmoCharacterEncoder


def test_lstm_cell_positional_arguments_and_shapes():
    torch.manual_seed(0)
    # AllenNLP: (input_size, hidden_size, cell_size, go_forward, recurrent_dropout_probability,
    #            memory_cell_clip_value, state_projection_clip_value)
    cell = LstmCellWithProjection(4, 3, 5, False, 0.0, 2.0, 1.5)
    assert (cell.go_forward, cell.memory_cell_clip_value, cell.state_projection_clip_value) == (False, 2.0, 1.5)
    with pytest.raises(ValueError, match="recurrent_dropout_probability"):
        LstmCellWithProjection(4, 3, 5, True, 0.1)
    x = torch.randn(3, 6, 4)
    h0, c0 = torch.randn(1, 3, 3), torch.randn(1, 3, 5)
    out, (h, c) = cell(x, [6, 4, 1], (h0, c0))  # a list of lengths, states [1, B, H], as AllenNLP
    assert out.shape == (3, 6, 3) and h.shape == (1, 3, 3) and c.shape == (1, 3, 5)
    ref_out, ref_h, ref_c = lstm_proj(x, torch.tensor([6, 4, 1]), *cell.weights(), 2.0, 1.5, reverse=True,
                                      h0=h0[0], c0=c0[0], backend="torch")
    assert_close("out", ref_out, out)
    assert_close("h", ref_h, h[0])
    assert_close("c", ref_c, c[0])


def test_elmo_lstm_positional_arguments_and_reset_mask():
    frozen = ElmoLstm(4, 4, 6, 2)  # AllenNLP's default: requires_grad=False
    assert not any(p.requires_grad for p in frozen.parameters())
    lstm = ElmoLstm(4, 4, 6, 2, True, 0.0, 3.0, 2.0)
    assert all(p.requires_grad for p in lstm.parameters())
    cell = lstm.forward_layer_1
    assert (cell.memory_cell_clip_value, cell.state_projection_clip_value) == (3.0, 2.0)
    with pytest.raises(ValueError, match="recurrent_dropout_probability"):
        ElmoLstm(4, 4, 6, 2, False, 0.5)
    lstm(torch.randn(3, 5, 4), torch.ones(3, 5, dtype=torch.bool))
    with pytest.raises(ValueError, match="3 rows"):
        lstm.reset_states(torch.tensor([True]))  # used to broadcast and zero every row
    lstm.reset_states(torch.tensor([True, False, False]))
    assert torch.count_nonzero(lstm._states[0][:, 0]) == 0 and torch.count_nonzero(lstm._states[0][:, 1:]) > 0


@pytest.mark.parametrize("kind", ["hdf5", "safetensors"])
def test_character_encoder_loads_its_weights_alone(files, kind, tmp_path):
    options_file, weight_file = files
    bilm = ElmoBiLm(options_file, weight_file)
    if kind == "safetensors":
        weight_file = str(tmp_path / "m.safetensors")
        save_checkpoint(bilm, weight_file)
    enc = ElmoCharacterEncoder(options_file, weight_file)  # AllenNLP: _ElmoCharacterEncoder(options, weights)
    assert not any(p.requires_grad for p in enc.parameters())
    assert enc.get_output_dim() == bilm._token_embedder.get_output_dim() == 12
    for k, v in bilm._token_embedder.state_dict().items():
        assert torch.equal(enc.state_dict()[k], v), k
    x = batch_to_ids([["One", "two", "."], ["x"]])
    assert torch.equal(enc(x)["token_embedding"], bilm._token_embedder(x)["token_embedding"])
    assert len(enc._convolutions) == len(small_options()["char_cnn"]["filters"])
    trainable = ElmoCharacterEncoder(options_file, weight_file, True)
    assert all(p.requires_grad for p in trainable.parameters())


def test_highway_module_is_callable(files):
    from elmo_fast.ops.encoder import char_cnn_ref

    enc = ElmoCharacterEncoder(*files)
    ids = random_char_ids(7, seed=2)
    convs = enc.convolutions
    args = (ids, enc._char_embedding_weights, [c.weight for c in convs], [c.bias for c in convs])
    # the highway's input: the encoder with no highway layers and an identity projection
    F_total = enc.n_filters_total
    h = char_cnn_ref(*args, [], [], torch.eye(F_total), torch.zeros(F_total), enc.activation)
    expected = char_cnn_ref(*args, [la.weight for la in enc._highways._layers], [la.bias for la in enc._highways._layers],
                            torch.eye(F_total), torch.zeros(F_total), enc.activation)
    assert_close("highway", expected, enc._highways(h))
