from .cache import WordVectorCache
from .function import char_cnn, unique_tokens
from .reference import char_cnn_ref

__all__ = ["WordVectorCache", "char_cnn", "char_cnn_ref", "unique_tokens"]
