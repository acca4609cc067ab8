"""Registers ckaad-anomalib's model and datamodules with anomalib the moment ``anomalib.models`` is imported.

anomalib has no plugin entry points. Its CLI resolves ``--model Ckaad`` / ``--data ELPV`` among the subclasses that
are already imported. ``anomalib.models.get_model`` looks names up in ``anomalib.models``. So the classes must be
imported, and attached to those modules, before anything resolves a name.

The wheel ships ``ckaad_anomalib.pth`` into site-packages. Python runs it at start-up (for ``pip install .`` and
``pip install -e .`` alike), and it imports this module. This module only appends a finder to ``sys.meta_path``:
no torch, no anomalib. Processes that never import anomalib pay one string comparison per import. When
``anomalib.models`` is imported, the finder wraps its loader. After the module body has run, it imports
:mod:`ckaad_anomalib.models` and :mod:`ckaad_anomalib.data`, which attach ``Ckaad`` and the datamodules (see
:func:`attach`). This is the post-import-hook pattern that setuptools uses for ``_distutils_hack``. The same
finder also catches ``anomalib.data.utils.image`` and replaces its ``read_image`` with the project's reader, which
reads 16-bit and float images correctly (:mod:`ckaad_anomalib.image_io`).

Without the hook (e.g. the ``.pth`` file was removed), ``import ckaad_anomalib.models`` does the same by hand.
"""

from __future__ import annotations

import importlib
import importlib.abc
import sys
import warnings
from types import ModuleType
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from collections.abc import Sequence
    from importlib.machinery import ModuleSpec

TARGET = "anomalib.models"
READER = "anomalib.data.utils.image"  # defines read_image; replaced before other modules copy the name
# Module paths that ``get_model({"class_path": "<module>.Ckaad"})`` may import.
ALLOWED_MODULE_PATHS = (
    "ckaad_anomalib",
    "ckaad_anomalib.models",
    "ckaad_anomalib.models.ckaad",
    "ckaad_anomalib.models.supersimplenet_weak",
)


def _register() -> None:
    """Import the plugin packages; importing them attaches their classes to anomalib."""
    import ckaad_anomalib.data
    import ckaad_anomalib.models  # noqa: F401


def _install_reader() -> None:
    """Make anomalib read 16-bit / float images correctly and name unreadable files (:mod:`ckaad_anomalib.image_io`)."""
    from ckaad_anomalib.image_io import install

    install()


def _log_once() -> None:
    """Make ``anomalib.loggers.configure_logger`` (called by the CLI) leave one console handler, not two.

    It calls ``logging.basicConfig`` (a plain stderr handler) and then adds a rich handler to the root logger, so every
    log line of ``anomalib train`` was printed twice. The wrapper removes the plain handler it added; the rich one
    stays.
    """
    import functools
    import logging

    module = sys.modules[LOGGERS]
    original = module.configure_logger
    if getattr(original, "__wrapped__", None) is not None:
        return

    @functools.wraps(original)
    def configure_logger(level: int | str = logging.INFO) -> None:
        root = logging.getLogger()
        before = set(root.handlers)
        original(level)
        added = [handler for handler in root.handlers if handler not in before]
        if any(type(handler).__name__ == "RichHandler" for handler in added):
            for handler in added:
                if type(handler) is logging.StreamHandler:
                    root.removeHandler(handler)

    module.configure_logger = configure_logger  # type: ignore[attr-defined]


LOGGERS = "anomalib.loggers"
# what to run right after each module has been imported
ACTIONS = {READER: _install_reader, LOGGERS: _log_once, TARGET: _register}


class _RegisteringLoader(importlib.abc.Loader):
    """Delegates to the real loader of ``anomalib.models``, then registers the plugin."""

    def __init__(self, loader: importlib.abc.Loader, name: str) -> None:
        self._loader = loader
        self._name = name

    def create_module(self, spec: ModuleSpec) -> ModuleType | None:
        return self._loader.create_module(spec)

    def exec_module(self, module: ModuleType) -> None:
        self._loader.exec_module(module)
        try:
            ACTIONS[self._name]()
        except Exception as exc:  # noqa: BLE001 - a broken plugin must never break anomalib itself
            warnings.warn(f"ckaad-anomalib could not register with anomalib: {exc!r}", stacklevel=2)

    def __getattr__(self, name: str) -> Any:  # noqa: ANN401 - e.g. get_resource_reader, is_package
        return getattr(self._loader, name)


class AnomalibModelsFinder(importlib.abc.MetaPathFinder):
    """Meta-path finder that intercepts only the imports of the modules in :data:`ACTIONS`, once each."""

    def __init__(self) -> None:
        self.pending = set(ACTIONS)

    def find_spec(
        self,
        fullname: str,
        path: Sequence[str] | None,
        target: ModuleType | None = None,
    ) -> ModuleSpec | None:
        if fullname not in self.pending:
            return None
        self.pending.discard(fullname)
        if not self.pending:
            sys.meta_path.remove(self)  # done; processes that never import anomalib keep paying one set lookup
        for finder in sys.meta_path:
            find_spec = getattr(finder, "find_spec", None)
            spec = find_spec(fullname, path, target) if finder is not self and find_spec is not None else None
            if spec is not None and spec.loader is not None:
                spec.loader = _RegisteringLoader(spec.loader, fullname)
                return spec
        return None


def install() -> None:
    """Install the finder once (idempotent); runs the actions of modules that are already imported at once."""
    if any(isinstance(finder, AnomalibModelsFinder) for finder in sys.meta_path):
        return
    finder = AnomalibModelsFinder()
    for name, action in ACTIONS.items():
        if name in sys.modules:
            finder.pending.discard(name)
            action()
    if finder.pending:
        sys.meta_path.insert(0, finder)


def attach(classes: Sequence[type], target: str = TARGET) -> None:
    """Make ``classes`` reachable the ways anomalib looks names up (``get_model``, ``class_path: Name``).

    Args:
        classes: ``AnomalibModule`` or ``AnomalibDataModule`` subclasses to expose.
        target: The anomalib module to attach them to (``anomalib.models`` or ``anomalib.data``).
    """
    # From sys.modules: while the hook runs, `anomalib.models` is not yet an attribute of `anomalib`.
    module = sys.modules.get(target) or importlib.import_module(target)
    for cls in classes:
        setattr(module, cls.__name__, cls)
        if cls.__name__ not in module.__all__:
            module.__all__.append(cls.__name__)
    allowed = getattr(module, "ALLOWED_MODULES", None)
    if isinstance(allowed, set):
        allowed.update(ALLOWED_MODULE_PATHS)


install()
