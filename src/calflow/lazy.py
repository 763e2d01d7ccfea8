"""Package ``__init__`` modules that re-export their submodules' names without importing them.

A stage package whose submodules import torch (classify, motion, gradcam) re-exports their public
names lazily, so that importing a torch-free submodule (``params``, ``store``) stays torch-free:
``__getattr__, __dir__ = lazy_exports(__name__, exports, submodules)``.
"""

from __future__ import annotations

import importlib
import sys
from collections.abc import Callable, Iterable, Mapping
from typing import Any


def lazy_exports(package: str, exports: Mapping[str, str],
                 submodules: Iterable[str]) -> tuple[Callable[[str], Any], Callable[[], list[str]]]:
    """The module-level ``__getattr__`` and ``__dir__`` of ``package``: ``exports`` maps a name to the
    module that defines it (imported on first use, then cached in the package), ``submodules`` are
    the package's submodules reachable as attributes."""
    subs = tuple(submodules)

    def __getattr__(name: str) -> Any:
        if name in exports:
            value = getattr(importlib.import_module(exports[name]), name)
        elif name in subs:
            value = importlib.import_module(f"{package}.{name}")
        else:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        setattr(sys.modules[package], name, value)
        return value

    def __dir__() -> list[str]:
        return sorted({*vars(sys.modules[package]), *exports, *subs})

    return __getattr__, __dir__
