from .function import CharConvMaxFunction, char_cnn_conv_max
from .reference import conv_max_backward_ref, conv_max_ref

__all__ = ["CharConvMaxFunction", "char_cnn_conv_max", "conv_max_backward_ref", "conv_max_ref"]
