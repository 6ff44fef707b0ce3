"""zeta_adaptive: route LLM calls across a self-hosted fleet and learn, with bandits, which model to use.

The public names are imported on first use (PEP 562), so ``import zeta_adaptive`` costs almost
nothing and ``from zeta_adaptive import Router`` loads only what a router needs (not pandas,
which the analysis and warm-start functions import themselves).
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from .exceptions import (
    AllModelsFailed,
    ConfigError,
    FeedbackError,
    InvalidRequest,
    MissingDependency,
    RequestRejected,
    StoreError,
    StreamBroken,
    UnknownTaskType,
    ZetaError,
)

if TYPE_CHECKING:
    from .backends import HttpxBackend, Outcome, Reply
    from .budget import BudgetPacer
    from .config import Config, ModelConfig, RouteConfig, load_config
    from .contextual import LinearThompsonPolicy, LinUCBPolicy
    from .features import Features, Featurizer
    from .policies import Objective, Ranking, make_policy
    from .results import AsyncChatStream, Attempt, CallInfo, ChatResult, ChatStream, EmbedResult
    from .router import Router, classify
    from .store import Store

__version__ = "0.1.0"

#: public name -> the submodule that defines it, imported when the name is first looked up
_LAZY = {
    **dict.fromkeys(["HttpxBackend", "Outcome", "Reply"], "backends"),
    **dict.fromkeys(["Config", "ModelConfig", "RouteConfig", "load_config"], "config"),
    **dict.fromkeys(["Objective", "Ranking", "make_policy"], "policies"),
    **dict.fromkeys(["AsyncChatStream", "Attempt", "CallInfo", "ChatResult", "ChatStream", "EmbedResult"], "results"),
    **dict.fromkeys(["Router", "classify"], "router"),
    "Store": "store",
    "BudgetPacer": "budget",
    **dict.fromkeys(["LinearThompsonPolicy", "LinUCBPolicy"], "contextual"),
    **dict.fromkeys(["Features", "Featurizer"], "features"),
}


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{module}", __name__), name)
    globals()[name] = value  # later lookups skip this function
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *_LAZY})


__all__ = [
    "Router",
    "Config",
    "ModelConfig",
    "RouteConfig",
    "load_config",
    "Attempt",
    "ChatResult",
    "EmbedResult",
    "ChatStream",
    "AsyncChatStream",
    "CallInfo",
    "classify",
    "Objective",
    "Ranking",
    "make_policy",
    "Featurizer",
    "Features",
    "LinearThompsonPolicy",
    "LinUCBPolicy",
    "BudgetPacer",
    "Store",
    "HttpxBackend",
    "Outcome",
    "Reply",
    "ZetaError",
    "ConfigError",
    "UnknownTaskType",
    "RequestRejected",
    "AllModelsFailed",
    "FeedbackError",
    "InvalidRequest",
    "StoreError",
    "StreamBroken",
    "MissingDependency",
]
