from .function import char_cnn
from .reference import char_cnn_ref

__all__ = ["char_cnn", "char_cnn_ref"]
