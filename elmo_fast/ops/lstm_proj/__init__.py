from .function import lstm_proj
from .reference import lstm_proj_ref

__all__ = ["lstm_proj", "lstm_proj_ref"]
