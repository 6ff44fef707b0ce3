"""zeta_adaptive: route LLM calls across a self-hosted fleet and learn, with bandits, which model to use."""

from .backends import FakeBackend, HttpxBackend, Outcome, Reply
from .budget import BudgetPacer
from .config import Config, ModelConfig, RouteConfig, load_config
from .contextual import LinearThompsonPolicy, LinUCBPolicy
from .exceptions import (
    AllModelsFailed,
    ConfigError,
    FeedbackError,
    InvalidRequest,
    RequestRejected,
    StoreError,
    StreamBroken,
    UnknownTaskType,
    ZetaError,
)
from .features import Features, Featurizer
from .policies import Objective, Ranking, make_policy
from .router import AsyncChatStream, Attempt, ChatResult, ChatStream, EmbedResult, Router, classify
from .store import Store

__version__ = "0.1.0"

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
    "FakeBackend",
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
]
