from .bilm import ElmoBiLm
from .char_encoder import ElmoCharacterEncoder, Highway
from .elmo import Elmo
from .lstm import ElmoLstm, LstmCellWithProjection
from .scalar_mix import ScalarMix

__all__ = ["Elmo", "ElmoBiLm", "ElmoCharacterEncoder", "ElmoLstm", "Highway", "LstmCellWithProjection", "ScalarMix"]
