"""Package surfaces that import on first use: ``import probes`` costs nothing until a name is read.

A package's ``__init__`` names each module that defines public objects, and those objects;
``lazy_exports`` gives the module-level ``__getattr__`` and ``__dir__`` (PEP 562) that import the
defining module when the name is first read. So ``prism --help`` and the toolkit's own imports
(``probes.core.errors`` runs ``probes/__init__`` first) do not load torch, TransformerLens and
scikit-learn for names they never use, while users still write ``from probes import load_model``.
"""

from __future__ import annotations

from importlib import import_module
from typing import Any, Callable, Mapping, Sequence

__all__ = ["lazy_exports"]


def lazy_exports(
    package: str, modules: Mapping[str, Sequence[str]]
) -> tuple[Callable[[str], Any], Callable[[], list[str]], list[str]]:
    """``(__getattr__, __dir__, __all__)`` for ``package``, whose public names live in other modules.

    Args:
        package: the package's name (for error messages), e.g. ``"probes"``.
        modules: each defining module -> the public names it gives, e.g.
            ``{"probes.core.models": ("load_model",)}``.

    Returns:
        the two module-level functions and the sorted public names, for ``__getattr__``,
        ``__dir__`` and ``__all__``.
    """
    origins = {name: module for module, names in modules.items() for name in names}

    def __getattr__(name: str) -> Any:
        if name not in origins:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        return getattr(import_module(origins[name]), name)

    def __dir__() -> list[str]:
        return sorted(origins)

    return __getattr__, __dir__, sorted(origins)
