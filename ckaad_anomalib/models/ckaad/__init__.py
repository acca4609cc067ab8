"""CKAAD model: torch model, losses, anomaly map and Lightning module."""

from .lightning_model import Ckaad
from .loss import CkaadLoss
from .torch_model import CkaadModel

__all__ = ["Ckaad", "CkaadLoss", "CkaadModel"]
