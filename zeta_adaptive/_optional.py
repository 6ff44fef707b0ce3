"""Optional dependencies: an import that needs an extra fails with an error naming the extra to install."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from ._exceptions import MissingDependency

__all__ = ["requires"]


@contextmanager
def requires(extra: str) -> Iterator[None]:
    """Imports in this block come from ``extra``: a missing module raises :class:`MissingDependency`.

    Usage: ``with requires("plots"): from matplotlib.figure import Figure``.
    """
    try:
        yield
    except ModuleNotFoundError as exc:
        raise MissingDependency((exc.name or str(exc)).split(".")[0], extra) from exc
