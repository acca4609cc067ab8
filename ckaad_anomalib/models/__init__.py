"""anomalib models provided by ckaad-anomalib.

Importing this package attaches every model to ``anomalib.models`` (``get_model("Ckaad")``, ``class_path: Ckaad``),
which the start-up hook in :mod:`ckaad_anomalib._hook` does automatically when anomalib is imported.
"""

from ckaad_anomalib._hook import attach

from .ckaad import Ckaad, CkaadLoss, CkaadModel
from .supersimplenet_weak import SupersimplenetWeak

attach([Ckaad, SupersimplenetWeak])

__all__ = ["Ckaad", "CkaadLoss", "CkaadModel", "SupersimplenetWeak"]
