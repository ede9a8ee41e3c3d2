"""elmo_fast: a performance-tuned, drop-in ELMo for PyTorch.

    from elmo_fast import Elmo, batch_to_ids
"""

import torch  # noqa: F401  (must precede the native extension, which links against libtorch)

from ._backend import available_backends
from .chars import batch_to_ids
from .modules import Elmo, ElmoBiLm, ScalarMix
from .embedder import ElmoEmbedder
from .options import PRESETS, load_options
from .weights import export_elmo, load_weights, save_checkpoint, save_hdf5

__version__ = "0.1.0"

__all__ = [
    "Elmo", "ElmoBiLm", "ElmoEmbedder", "ScalarMix", "batch_to_ids", "available_backends", "load_options", "PRESETS",
    "export_elmo", "load_weights", "save_checkpoint", "save_hdf5",
]
