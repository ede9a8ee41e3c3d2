"""The reference for `ElmoEmbedder` and `elmo-fast embed`: AllenNLP 0.9's `allennlp/commands/elmo.py`
(`ElmoEmbedder` and its `embed_file`) and `allennlp.nn.util.remove_sentence_boundaries`, transcribed,
over the eager (`backend="torch"`) stateful biLM in place of its `_ElmoBiLm`. AllenNLP itself is not
installable next to this torch, so its code is kept here as it was; the only change is the empty
embedding, which AllenNLP hard-codes as float64 `(3, 0, 1024)` and elmo_fast returns as float32
`(L, 0, 2P)` of the model."""

from __future__ import annotations

import itertools
import json

import h5py
import numpy
import torch

from elmo_fast.chars import batch_to_ids
from elmo_fast.modules.bilm import ElmoBiLm


def remove_sentence_boundaries(tensor: torch.Tensor, mask: torch.Tensor):
    sequence_lengths = mask.sum(dim=1).detach().cpu().numpy()
    new_shape = list(tensor.data.shape)
    new_shape[1] = new_shape[1] - 2
    tensor_without_boundary_tokens = tensor.new_zeros(*new_shape)
    new_mask = tensor.new_zeros((new_shape[0], new_shape[1]), dtype=torch.long)
    for i, j in enumerate(sequence_lengths):
        if j > 2:
            tensor_without_boundary_tokens[i, : (j - 2), :] = tensor[i, 1 : (j - 1), :]
            new_mask[i, : (j - 2)] = 1
    return tensor_without_boundary_tokens, new_mask


def lazy_groups_of(iterator, group_size):
    return iter(lambda: list(itertools.islice(iterator, 0, group_size)), [])


class AllenNLPElmoEmbedder:
    def __init__(self, options_file, weight_file) -> None:
        self.elmo_bilm = ElmoBiLm(options_file, weight_file, stateful=True, backend="torch")
        self.elmo_bilm.eval()

    def empty_embedding(self) -> numpy.ndarray:
        return numpy.zeros((self.elmo_bilm.num_layers, 0, self.elmo_bilm.get_output_dim()), dtype=numpy.float32)

    @torch.no_grad()
    def batch_to_embeddings(self, batch):
        character_ids = batch_to_ids(batch)
        bilm_output = self.elmo_bilm(character_ids)
        layer_activations = bilm_output["activations"]
        mask_with_bos_eos = bilm_output["mask"].long()
        without_bos_eos = [remove_sentence_boundaries(layer, mask_with_bos_eos) for layer in layer_activations]
        activations = torch.cat([ele[0].unsqueeze(1) for ele in without_bos_eos], dim=1)
        mask = without_bos_eos[0][1]
        return activations, mask

    def embed_sentence(self, sentence):
        return self.embed_batch([sentence])[0]

    def embed_batch(self, batch):
        elmo_embeddings = []
        if batch == [[]]:
            elmo_embeddings.append(self.empty_embedding())
        else:
            embeddings, mask = self.batch_to_embeddings(batch)
            for i in range(len(batch)):
                length = int(mask[i, :].sum())
                if length == 0:
                    elmo_embeddings.append(self.empty_embedding())
                else:
                    elmo_embeddings.append(embeddings[i, :, :length, :].detach().cpu().numpy())
        return elmo_embeddings

    def embed_sentences(self, sentences, batch_size=64):
        for batch in lazy_groups_of(iter(sentences), batch_size):
            yield from self.embed_batch(batch)

    def embed_file(self, input_file, output_file_path, output_format="all", batch_size=64, forget_sentences=False,
                   use_sentence_keys=False):
        assert output_format in ["all", "top", "average"]
        sentences = [line.strip() for line in input_file]
        blank_lines = [i for (i, line) in enumerate(sentences) if line == ""]
        if blank_lines:
            raise ValueError(f"Your input file contains empty lines at indexes {blank_lines}. Please remove them.")
        split_sentences = [sentence.split() for sentence in sentences]
        if use_sentence_keys:
            embedded_sentences = zip(sentences, self.embed_sentences(split_sentences, batch_size))
        else:
            embedded_sentences = ((str(i), x) for i, x in enumerate(self.embed_sentences(split_sentences, batch_size)))
        sentence_to_index = {}
        with h5py.File(output_file_path, "w") as fout:
            for key, embeddings in embedded_sentences:
                if use_sentence_keys and key in fout.keys():
                    raise ValueError(f"Key already exists in {output_file_path}. To encode duplicate sentences, do not pass "
                                     "the --use-sentence-keys flag.")
                if not forget_sentences and not use_sentence_keys:
                    sentence = sentences[int(key)]
                    sentence_to_index[sentence] = key
                if output_format == "all":
                    output = embeddings
                elif output_format == "top":
                    output = embeddings[-1]
                elif output_format == "average":
                    output = numpy.average(embeddings, axis=0)
                fout.create_dataset(str(key), output.shape, dtype="float32", data=output)
            if not forget_sentences and not use_sentence_keys:
                sentence_index_dataset = fout.create_dataset("sentence_to_index", (1,), dtype=h5py.special_dtype(vlen=str))
                sentence_index_dataset[0] = json.dumps(sentence_to_index)
        input_file.close()


def read_allennlp_hdf5(path) -> tuple[dict[str, numpy.ndarray], dict | None]:
    """An output file read the way AllenNLP users' scripts read it: `json.loads(f["sentence_to_index"][0])`
    and `f[key][...]` for every other key."""
    with h5py.File(path, "r") as f:
        index = json.loads(f["sentence_to_index"][0]) if "sentence_to_index" in f else None
        vectors = {k: f[k][...] for k in f.keys() if k != "sentence_to_index"}
    return vectors, index
