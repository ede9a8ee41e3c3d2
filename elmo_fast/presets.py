"""The configurations of AllenNLP's published ELMo models (options only, no weights) plus `tiny`.

Data only, so that both `options` (which loads these by name) and `pretrained` (which tells a preset
apart from a published model) can import it.
"""

from __future__ import annotations

_FILTERS = [[1, 32], [2, 32], [3, 64], [4, 128], [5, 256], [6, 512], [7, 1024]]


def _preset(dim: int, proj: int, n_highway: int, filters=_FILTERS, n_layers: int = 2) -> dict:
    return {
        "lstm": {
            "use_skip_connections": True,
            "projection_dim": proj,
            "cell_clip": 3,
            "proj_clip": 3,
            "dim": dim,
            "n_layers": n_layers,
        },
        "char_cnn": {
            "activation": "relu",
            "filters": [list(f) for f in filters],
            "n_highway": n_highway,
            "embedding": {"dim": 16},
            "n_characters": 262,
            "max_characters_per_token": 50,
        },
    }


#: Published configurations (AllenNLP/bilm-tf) plus a `tiny` one for CPU pretraining and tests.
PRESETS: dict[str, dict] = {
    # C 256 (not 512): at a fixed few-minute CPU budget it trains ~1.4x more tokens/s and reaches a lower
    # validation perplexity on lm_corpus (382 vs 414 after 240 s, measured).
    "tiny": _preset(256, 128, 1, filters=[[1, 32], [2, 32], [3, 64], [4, 128], [5, 128], [6, 128]]),
    "small": _preset(1024, 128, 1),
    "medium": _preset(2048, 256, 1),
    "original": _preset(4096, 512, 2),
}
