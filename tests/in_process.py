"""A Router on an in-process fleet: every model of its config simulated behind an httpx transport,
so unit tests run the real request building and response parsing with no server."""

from __future__ import annotations

from typing import Any

from zeta_adaptive import Router
from zeta_adaptive.simulate import ModelSpec, mock_fleet


def fake_router(config: Any, *specs: ModelSpec, **options: Any) -> Router:
    """A Router whose models answer at once (as ``specs`` say, for those they name); ``options`` go to Router."""
    return Router(config, transport=mock_fleet(config, *specs, latency_s=0.001).transports(), **options)
