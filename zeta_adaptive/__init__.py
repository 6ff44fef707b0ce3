"""zeta_adaptive: route LLM calls across a self-hosted fleet and learn, with bandits, which model to use.

The layout is httpx's: a module users import by name as a namespace of functions is public
(``analysis``, ``replay``, ``simulate``, ``report``, ``demo``, ``cli``, ``gateway``); every other module
is private (``_router``, ``_store``, ...) and its public names are re-exported here.
The public names are imported on first use (PEP 562), so ``import zeta_adaptive`` costs almost
nothing and ``from zeta_adaptive import Router`` loads only what a router needs (not pandas,
which the analysis and warm-start functions import themselves).
"""

from __future__ import annotations

import importlib
import importlib.abc
import importlib.util
import sys
import warnings
from typing import TYPE_CHECKING, Any

from ._exceptions import (
    AllModelsFailed,
    ConfigError,
    FeedbackError,
    InvalidRequest,
    MissingDependency,
    ReplayError,
    RequestRejected,
    StoreError,
    StreamBroken,
    UnknownTaskType,
    ZetaError,
)

if TYPE_CHECKING:
    from ._backends import HttpxBackend, Outcome, Reply
    from ._budget import BudgetPacer
    from ._config import Config, ModelConfig, RouteConfig, load_config
    from ._contextual import LinearThompsonPolicy, LinUCBPolicy
    from ._features import Features, Featurizer
    from ._ids import new_call_id
    from ._limits import AdaptiveLimit, LoadConfig
    from ._policies import Objective, Policy, Ranking
    from ._probit import ProbitThompsonPolicy
    from ._registry import POLICIES, make_policy
    from ._results import AsyncChatStream, Attempt, CallInfo, ChatResult, ChatStream, EmbedResult
    from ._router import Router, classify
    from ._store import TABLES, Store, head_revision

__version__ = "0.1.0"

#: public name -> the submodule that defines it, imported when the name is first looked up
_LAZY = {
    **dict.fromkeys(["HttpxBackend", "Outcome", "Reply"], "_backends"),
    **dict.fromkeys(["Config", "ModelConfig", "RouteConfig", "load_config"], "_config"),
    **dict.fromkeys(["Objective", "Ranking", "Policy"], "_policies"),
    **dict.fromkeys(["POLICIES", "make_policy"], "_registry"),
    **dict.fromkeys(["AsyncChatStream", "Attempt", "CallInfo", "ChatResult", "ChatStream", "EmbedResult"], "_results"),
    **dict.fromkeys(["Router", "classify"], "_router"),
    **dict.fromkeys(["Store", "TABLES", "head_revision"], "_store"),
    "BudgetPacer": "_budget",
    "ProbitThompsonPolicy": "_probit",
    **dict.fromkeys(["LinearThompsonPolicy", "LinUCBPolicy"], "_contextual"),
    **dict.fromkeys(["Features", "Featurizer"], "_features"),
    "new_call_id": "_ids",
    **dict.fromkeys(["AdaptiveLimit", "LoadConfig"], "_limits"),
}

#: deprecated module name -> where it lives now (the old names work, with a DeprecationWarning, for one release)
_MOVED = {
    "contextual_replay": "replay.contextual",
    **{name: f"_{name}" for name in ("backends", "budget", "config", "contextual", "engine", "exceptions")},
    **{name: f"_{name}" for name in ("features", "feedback", "health", "ids", "inputs", "learning", "lessons")},
    **{name: f"_{name}" for name in ("limits", "policies", "records", "results", "router", "scrub", "store")},
    "validators": "_validators",
}


class _MovedModules(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    """Imports ``zeta_adaptive.OLD`` as the very module it became (one object: patching either patches both)."""

    def find_spec(self, fullname: str, path: Any = None, target: Any = None) -> Any:
        package, _, old = fullname.rpartition(".")
        return importlib.util.spec_from_loader(fullname, self) if package == __name__ and old in _MOVED else None

    def create_module(self, spec: Any) -> Any:
        new = _MOVED[spec.name.rpartition(".")[2]]
        advice = f"{__name__}.{new}" if not new.startswith("_") else f"its public names from {__name__}"
        caller = sys._getframe(1)  # the warning names the importing line: the first frame outside imports and here
        while caller.f_back and (caller.f_code.co_filename == __file__ or "importlib" in caller.f_code.co_filename):
            caller = caller.f_back
        warnings.warn_explicit(
            f"{spec.name} is deprecated: import {advice} instead",
            DeprecationWarning,
            caller.f_code.co_filename,
            caller.f_lineno,
            caller.f_globals.get("__name__"),
            caller.f_globals.setdefault("__warningregistry__", {}),
        )
        module = importlib.import_module(f".{new}", __name__)
        spec.loader_state = module.__spec__  # the import system sets __spec__ to the alias's: exec_module restores it
        return module

    def exec_module(self, module: Any) -> None:
        module.__spec__ = module.__spec__.loader_state


sys.meta_path.append(_MovedModules())


def __getattr__(name: str) -> Any:
    if name in _MOVED:  # ``zeta_adaptive.store.Store`` without importing zeta_adaptive.store first
        return importlib.import_module(f".{name}", __name__)
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
    "classify",
    "Attempt",
    "ChatResult",
    "EmbedResult",
    "ChatStream",
    "AsyncChatStream",
    "CallInfo",
    "Objective",
    "Ranking",
    "Policy",
    "POLICIES",
    "make_policy",
    "Featurizer",
    "Features",
    "LinearThompsonPolicy",
    "LinUCBPolicy",
    "ProbitThompsonPolicy",
    "BudgetPacer",
    "Store",
    "TABLES",
    "head_revision",
    "new_call_id",
    "AdaptiveLimit",
    "LoadConfig",
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
    "ReplayError",
    "StreamBroken",
    "MissingDependency",
]
