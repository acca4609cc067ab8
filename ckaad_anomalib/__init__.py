"""CKAAD for anomalib: coarse-knowledge-aware adversarial anomaly detection.

Importing this package is cheap: the model classes (and with them torch and anomalib) load on first attribute
access, because a start-up hook (see :mod:`ckaad_anomalib._hook`) imports this package in every Python process.

Example:
    >>> from ckaad_anomalib import Ckaad  # doctest: +SKIP
    >>> model = Ckaad(backbone="resnet18", layers=("layer2", "layer3"))  # doctest: +SKIP
"""

from importlib import import_module
from typing import Any

__version__ = "0.1.0"

_LAZY = {
    "Ckaad": "ckaad_anomalib.models",
    "CkaadModel": "ckaad_anomalib.models",
    "SupersimplenetWeak": "ckaad_anomalib.models",
    "install_lite0_weights": "ckaad_anomalib.weights",
}

__all__ = ["Ckaad", "CkaadModel", "SupersimplenetWeak", "__version__", "install_lite0_weights"]


def __getattr__(name: str) -> Any:  # noqa: ANN401 - lazily re-exported objects of several types
    if name in _LAZY:
        return getattr(import_module(_LAZY[name]), name)
    msg = f"module 'ckaad_anomalib' has no attribute {name!r}"
    raise AttributeError(msg)
