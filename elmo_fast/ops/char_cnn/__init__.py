from .cache import WordVectorCache
from .function import char_cnn
from .reference import char_cnn_ref, highway_ref

__all__ = ["WordVectorCache", "char_cnn", "char_cnn_ref", "highway_ref"]
