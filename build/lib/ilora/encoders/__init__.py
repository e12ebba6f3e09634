"""Sequential recommenders (SASRec, GRU4Rec, Caser) that supply item embeddings and user states to the LLM.

Import the heavy parts (Lightning training) from `ilora.encoders.train`; this package root stays light.
"""

from ilora.encoders.base import SequentialEncoder
from ilora.encoders.cache import ensure_encoder
from ilora.encoders.caser import Caser
from ilora.encoders.gru4rec import GRU4Rec
from ilora.encoders.io import load_encoder, read_config, save_encoder
from ilora.encoders.registry import ENCODERS, build_encoder, build_from_config
from ilora.encoders.sasrec import SASRec

__all__ = [
    "ENCODERS", "Caser", "GRU4Rec", "SASRec", "SequentialEncoder", "build_encoder", "build_from_config", "ensure_encoder",
    "load_encoder", "read_config", "save_encoder",
]
