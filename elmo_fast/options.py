"""ELMo `options.json`: loading, validation and the published presets.

The options file is the single source of truth for shapes; everything that reads weights checks
them against it, so a mismatch is reported with the option and the dataset that disagree.
"""

from __future__ import annotations

import copy
import json
import logging
import os
from typing import Any, Union

from .presets import PRESETS

OptionsLike = Union[str, os.PathLike, dict]
logger = logging.getLogger(__name__)


class OptionsError(ValueError):
    """An options.json that is missing a key, has a wrong value, or disagrees with the weights."""


_REQUIRED = {
    "lstm": {"projection_dim", "dim", "n_layers"},
    "char_cnn": {"activation", "filters", "n_highway", "embedding", "n_characters", "max_characters_per_token"},
}
_KNOWN = {
    "lstm": _REQUIRED["lstm"] | {"use_skip_connections", "cell_clip", "proj_clip"},
    "char_cnn": _REQUIRED["char_cnn"],
}
# bilm-tf writes training-time keys next to the model ones; they do not affect the forward pass.
_IGNORED_TOP = {"bidirectional", "dropout", "n_tokens_vocab", "unroll_steps", "n_negative_samples_batch", "all_clip_norm_val", "n_epochs", "n_train_tokens", "batch_size"}


def load_options(options: OptionsLike) -> dict:
    """Read and validate options from a path to options.json, a preset name or a dict."""
    if isinstance(options, dict):
        opts = copy.deepcopy(options)
        where = "options dict"
    elif isinstance(options, str) and options in PRESETS:
        return copy.deepcopy(PRESETS[options])
    else:
        from .pretrained import resolve_file

        where = resolve_file(options, "options file")
        if not os.path.exists(where):
            from .pretrained import names

            raise FileNotFoundError(f"options file {where!r} does not exist (expected an ELMo options.json, a preset "
                                    f"{sorted(PRESETS)} or a published model {names()})")
        try:
            with open(where, encoding="utf-8") as f:
                opts = json.load(f)
        except json.JSONDecodeError as e:
            raise OptionsError(f"{where} is not valid JSON ({e}); expected an ELMo options.json") from None
    validate_options(opts, where)
    return opts


def validate_options(opts: Any, where: str = "options") -> None:
    if not isinstance(opts, dict):
        raise OptionsError(f"{where}: expected a JSON object with 'lstm' and 'char_cnn', got {type(opts).__name__}")
    for section in ("lstm", "char_cnn"):
        if section not in opts:
            raise OptionsError(f"{where}: missing section {section!r} (an ELMo options.json has 'lstm' and 'char_cnn')")
        missing = _REQUIRED[section] - set(opts[section])
        if missing:
            raise OptionsError(f"{where}: {section} is missing option(s) {sorted(missing)}")
        unknown = set(opts[section]) - _KNOWN[section]
        if unknown:
            # AllenNLP reads only the keys it needs, and options files written by other trainers
            # carry extras; a warning still catches a misspelt optional key such as 'cell_clp'.
            logger.warning("%s: ignoring unknown option(s) %s in %s (known: %s)", where, sorted(unknown), section, sorted(_KNOWN[section]))
    unknown_top = set(opts) - {"lstm", "char_cnn"} - _IGNORED_TOP
    if unknown_top:
        logger.warning("%s: ignoring unknown top-level option(s) %s", where, sorted(unknown_top))
    cnn, lstm = opts["char_cnn"], opts["lstm"]
    _check_types(opts, where)
    if cnn["activation"] not in ("relu", "tanh"):
        raise OptionsError(f"{where}: char_cnn.activation must be 'relu' or 'tanh', got {cnn['activation']!r}")
    if cnn["max_characters_per_token"] != 50:
        raise OptionsError(f"{where}: max_characters_per_token must be 50 (the width batch_to_ids produces), got {cnn['max_characters_per_token']}")
    if cnn["n_characters"] not in (261, 262):
        raise OptionsError(f"{where}: n_characters must be 262 (261 byte/marker ids + padding), got {cnn['n_characters']}")
    filters = cnn["filters"]
    if not filters or any(len(f) != 2 or not (1 <= f[0] <= 50) or f[1] < 1 for f in filters):
        raise OptionsError(f"{where}: char_cnn.filters must be a non-empty list of [width (1..50), count >= 1], got {filters}")
    if not lstm.get("use_skip_connections", True) and lstm["n_layers"] > 1:
        # AllenNLP's ElmoLstm always adds the residual; a file saying otherwise would be silently wrong.
        raise OptionsError(f"{where}: use_skip_connections=false is not supported (AllenNLP's ELMo always uses them)")


def _is_int(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)  # JSON true would pass as the int 1


def _is_number(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def _check_types(opts: dict, where: str) -> None:
    """Types and ranges, so a wrong value is named here instead of failing inside torch (or, like
    n_highway = -1 or n_layers = true, loading a file that it silently half-reads)."""
    cnn, lstm = opts["char_cnn"], opts["lstm"]

    def need(ok: bool, key: str, value, expected: str) -> None:
        if not ok:
            raise OptionsError(f"{where}: {key} must be {expected}, got {value!r}")

    for key in ("projection_dim", "dim", "n_layers"):
        need(_is_int(lstm[key]) and lstm[key] >= 1, f"lstm.{key}", lstm[key], "an integer >= 1")
    for key in ("cell_clip", "proj_clip"):
        if lstm.get(key) is not None:
            need(_is_number(lstm[key]) and lstm[key] >= 0, f"lstm.{key}", lstm[key], "a number >= 0 (0 or null: no clip)")
    if "use_skip_connections" in lstm:
        need(isinstance(lstm["use_skip_connections"], bool), "lstm.use_skip_connections", lstm["use_skip_connections"], "true or false")
    need(_is_int(cnn["n_highway"]) and cnn["n_highway"] >= 0, "char_cnn.n_highway", cnn["n_highway"], "an integer >= 0")
    need(isinstance(cnn["embedding"], dict) and _is_int(cnn["embedding"].get("dim")) and cnn["embedding"]["dim"] >= 1,
         "char_cnn.embedding", cnn["embedding"], 'an object like {"dim": 16}')
    for key in ("n_characters", "max_characters_per_token"):
        need(_is_int(cnn[key]), f"char_cnn.{key}", cnn[key], "an integer")
    filters = cnn["filters"]
    need(isinstance(filters, list) and all(isinstance(f, (list, tuple)) and all(_is_int(v) for v in f) for f in filters),
         "char_cnn.filters", filters, "a list of [width, count] integer pairs")


def n_filters(opts: dict) -> int:
    return sum(f[1] for f in opts["char_cnn"]["filters"])


def clip_value(v) -> float | None:
    """A clip of 0 or null means no clip."""
    return float(v) if v else None


def save_options(opts: dict, path: str | os.PathLike) -> None:
    from .utils import atomic_write_text

    atomic_write_text(path, json.dumps(opts, indent=2) + "\n")
