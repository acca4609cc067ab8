"""SuperSimpleNet trained with image-level labels only: the weakly supervised peer of Ckaad."""

from .lightning_model import SupersimplenetWeak
from .loss import WeakSSNLoss

__all__ = ["SupersimplenetWeak", "WeakSSNLoss"]
