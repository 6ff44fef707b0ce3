"""Router configuration: models, routes, policies, objective, store and deadline, from TOML or a dict.

Everything is validated at load time; an invalid config raises :class:`ConfigError` naming the
field (as a dotted path such as ``routes.code.models``) and the problem. ``Config.to_dict()`` gives
back a dict that ``Config.from_dict`` loads to an equal config.
"""

from __future__ import annotations

import math
import re
import tomllib
import warnings
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from sqlalchemy.engine import make_url
from sqlalchemy.exc import ArgumentError

from ._exceptions import ConfigError
from ._limits import LoadConfig
from ._policies import Objective
from ._registry import OPTION_TYPES, POLICIES, make_policy
from ._scrub import read_key
from ._validators import build as build_validators

__all__ = [
    "ModelConfig",
    "RouteConfig",
    "BreakerConfig",
    "KeyLimits",
    "ServerConfig",
    "Config",
    "load_config",
    "DEFAULT_STORE",
]

DEFAULT_STORE = "sqlite:///zeta.db"
#: HTTP statuses meaning the request itself is bad (for every model), unless the config says otherwise
REJECTING_DEFAULT = frozenset({400, 413, 422})
KINDS = ("chat", "embedding")
DEFAULT_CHAT_RESPONSE_BYTES = 8 * 1024 * 1024
DEFAULT_EMBEDDING_BASE_BYTES = 1024 * 1024
EMBEDDING_BYTES_PER_NUMBER = 32  # a float as JSON text ("-0.012345678901234567, ") with room to spare
_VERSION_PATH = re.compile(r"/v\d+(?:beta|alpha)?\d*(?:/|$)")


@dataclass(frozen=True)
class ModelConfig:
    """One model endpoint. The API key itself is never held here, only the variable that has it."""

    name: str
    base_url: str
    kind: str = "chat"
    model: str = ""  # name sent to the backend; "" means the table key
    api_key_env: str | None = None
    timeout_s: float = 10.0
    price_in_per_1k: float = 0.0
    price_out_per_1k: float = 0.0
    max_in_flight: int = 64
    dim: int | None = None  # embedding dimension, checked on every answer
    first_token_timeout_s: float | None = None  # streams: bound on the first token (and each gap); None = timeout_s
    space: str = ""  # embedding space label: models sharing it give comparable vectors; "" means `model`
    context_window: int | None = None  # tokens the model accepts (prompt + answer); None = unknown
    max_response_bytes: int | None = None  # cap on one answer's body (wire and decompressed); None = by kind

    def response_cap(self, inputs: int = 1) -> int:
        """The largest answer body accepted: ``max_response_bytes``, else 8 MiB for chat and, for
        embeddings, 1 MiB plus 32 bytes per number of ``inputs`` vectors of ``dim`` (4096 if unknown)."""
        if self.max_response_bytes is not None:
            return self.max_response_bytes
        if self.kind == "embedding":
            return DEFAULT_EMBEDDING_BASE_BYTES + inputs * (self.dim or 4096) * EMBEDDING_BYTES_PER_NUMBER
        return DEFAULT_CHAT_RESPONSE_BYTES

    @property
    def backend_model(self) -> str:
        return self.model or self.name

    @property
    def embedding_space(self) -> str:
        return self.space or self.backend_model

    def cost(self, tokens_in: int, tokens_out: int) -> float:
        """Price of one attempt from its token usage."""
        return tokens_in / 1000.0 * self.price_in_per_1k + tokens_out / 1000.0 * self.price_out_per_1k


@dataclass(frozen=True)
class RouteConfig:
    """A task type's candidate models (in the static table's order), its policy and hedging."""

    task_type: str
    models: tuple[str, ...]
    policy: str = "thompson"
    options: Mapping[str, Any] = field(default_factory=dict)
    hedge_quantile: float | None = None  # async calls: ask the next model too past this latency quantile
    validators: tuple[Any, ...] = ()  # checks on a finished answer, see :mod:`.validators`
    latency_measure: str = "total"  # what the policy learns as latency: "total" or "ttft" (streams)
    max_attempts: int | None = None  # this route's retry budget; None = the top-level max_attempts
    load: str = "off"  # "adaptive": each model's learned concurrency limit bounds it too (see :mod:`.limits`)
    budget_per_call: float | None = None  # mean cost per call to aim at (see :mod:`.budget`); None = no budget


@dataclass(frozen=True)
class BreakerConfig:
    """Cooldowns: when a model is skipped after failures, and for how long (see :mod:`.health`)."""

    consecutive_failures: int = 3
    failure_rate: float = 0.5
    window: int = 20
    min_calls: int = 10
    cooldown_s: float = 5.0
    max_cooldown_s: float = 60.0
    when_all_cooling: str = "wait"  # wait for the first model to reopen (within the deadline), or "try" at once
    latency_window: int = 200  # successful latencies kept per model for hedging quantiles


@dataclass(frozen=True)
class KeyLimits:
    """What one gateway client key may do: its routes (None = all), requests per minute, spend per UTC day."""

    routes: tuple[str, ...] | None = None
    requests_per_minute: float | None = None
    spend_per_day: float | None = None


@dataclass(frozen=True)
class ServerConfig:
    """The gateway (``zeta-adaptive serve``): where its client keys are, and limits per key id.

    The keys themselves live only in the environment variable ``api_keys_env``, comma-separated,
    each ``key`` or ``id=key``; ``keys`` maps a key id to its :class:`KeyLimits`.
    """

    api_keys_env: str | None = None
    keys: Mapping[str, KeyLimits] = field(default_factory=dict)


@dataclass(frozen=True)
class Config:
    """A whole router: validated, immutable."""

    models: Mapping[str, ModelConfig]
    routes: Mapping[str, RouteConfig]
    store: str = DEFAULT_STORE
    deadline_s: float = 30.0
    objective: Objective = field(default_factory=Objective)
    log_prompts: bool = False
    seed: int | None = None
    breaker: BreakerConfig = field(default_factory=BreakerConfig)
    journal_dir: str | None = None  # where log rows wait while the database is down
    refresh_s: float | None = None  # learn from other router processes' rows in the store this often
    pgbouncer: bool = False  # PostgreSQL behind PgBouncer in transaction mode: no prepared statements
    durability: str = "batched"  # "journal": each call's rows are fsynced to the local journal before it returns
    store_timeout_s: float = 2.0  # bound on every database operation (connect, statement, lock wait)
    feedback_window: int = 100_000  # recent calls kept in memory for feedback (older ones are looked up in the log)
    feedback_window_s: float = 86_400.0  # ... and for at most this long
    max_attempts: int = 4  # retries of transient failures happen only while a call has made fewer attempts
    rejecting_statuses: frozenset[int] = REJECTING_DEFAULT  # 4xx that reject the request for every model
    server: ServerConfig = field(default_factory=ServerConfig)  # the gateway's own settings
    load: LoadConfig = field(default_factory=LoadConfig)  # bounds of the adaptive concurrency limits

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Config:
        """Validate a plain dict (the TOML file's structure) and build a Config."""
        return _parse(data)

    @classmethod
    def from_toml(cls, path: str | Path) -> Config:
        """Read and validate a TOML file."""
        try:
            with open(path, "rb") as fh:
                data = tomllib.load(fh)
        except OSError as exc:
            raise ConfigError(str(path), f"cannot read config file: {exc.strerror}") from None
        except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
            raise ConfigError(str(path), f"invalid TOML: {exc}") from None
        return _parse(data)

    def to_dict(self) -> dict[str, Any]:
        """The config as a plain dict that :meth:`from_dict` accepts."""
        out: dict[str, Any] = {
            "store": self.store,
            "deadline_s": self.deadline_s,
            "log_prompts": self.log_prompts,
            "objective": _fields(self.objective),
            "models": {},
            "routes": {},
        }
        optional = ("seed", "journal_dir", "refresh_s", "pgbouncer", "durability", "store_timeout_s")
        for key in (*optional, "feedback_window", "feedback_window_s", "max_attempts"):
            if getattr(self, key) != getattr(Config, key):
                out[key] = getattr(self, key)
        if self.rejecting_statuses != REJECTING_DEFAULT:
            out["rejecting_statuses"] = sorted(self.rejecting_statuses)
        if self.server != ServerConfig():
            out["server"] = _server_dict(self.server)
        out["breaker"] = _fields(self.breaker)
        if self.load != LoadConfig():
            out["load"] = _fields(self.load)
        for name, m in self.models.items():
            out["models"][name] = {k: v for k, v in _fields(m).items() if k != "name" and v not in (None, "")}
        for task, r in self.routes.items():
            route = out["routes"][task] = {"models": list(r.models), "policy": r.policy, **r.options}
            for f in fields(r):  # the other settings, where they differ from the default
                value = getattr(r, f.name)
                if f.name not in ("task_type", "models", "policy", "options") and value != f.default:
                    route[f.name] = list(value) if isinstance(value, tuple) else value
        return out


def _fields(settings: Any) -> dict[str, Any]:
    """A dataclass's fields by name."""
    return {f.name: getattr(settings, f.name) for f in fields(settings)}


def load_config(source: Config | Mapping[str, Any] | str | Path) -> Config:
    """Accept a Config, a dict, or a path to a TOML file."""
    if isinstance(source, Config):
        return source
    if isinstance(source, Mapping):
        return Config.from_dict(source)
    return Config.from_toml(source)


# -- validation ---------------------------------------------------------------------------------

_MODEL_KEYS = {f.name for f in fields(ModelConfig)} - {"name"}
_ROUTE_KEYS = {f.name for f in fields(RouteConfig)} - {"task_type", "options"}  # every other key is a policy option
_TOP_KEYS = {f.name for f in fields(Config)}
#: the longest task type and model names the log's columns hold
TASK_CHARS, MODEL_CHARS = 64, 128


def _number(where: str, value: Any, *, positive: bool = False, minimum: float | None = None) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise ConfigError(where, f"must be a finite number, got {value!r}")
    if positive and value <= 0:
        raise ConfigError(where, f"must be > 0, got {value!r}")
    if minimum is not None and value < minimum:
        raise ConfigError(where, f"must be >= {minimum}, got {value!r}")
    return float(value)


def _integer(where: str, value: Any, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise ConfigError(where, f"must be an integer, got {value!r}")
    if value < minimum:
        raise ConfigError(where, f"must be >= {minimum}, got {value!r}")
    return value


def sqlite_file(url: str) -> Path | None:
    """The file a SQLite store URL names (None for another database, or SQLite in memory)."""
    parsed = make_url(url)
    if parsed.get_backend_name() != "sqlite" or parsed.database in (None, "", ":memory:"):
        return None
    return Path(parsed.database)


def _optional(check: Callable[..., Any], where: str, data: Mapping[str, Any], key: str, *args: Any, **kw: Any) -> Any:
    """``data[key]`` as ``check`` reads it (at ``where.key``), or None where the key is absent or None."""
    value = data.get(key)
    return None if value is None else check(f"{where}.{key}".lstrip("."), value, *args, **kw)


def _string(where: str, value: Any) -> str:
    if not isinstance(value, str) or not value.strip():
        raise ConfigError(where, f"must be a non-empty string, got {value!r}")
    return value


def _choice(where: str, value: Any, choices: tuple[str, ...]) -> Any:
    if value not in choices:
        raise ConfigError(where, f"must be {' or '.join(map(repr, choices))}, got {value!r}")
    return value


def _bool(where: str, value: Any) -> bool:
    if not isinstance(value, bool):
        raise ConfigError(where, f"must be true or false, got {value!r}")
    return value


def _table(where: str, value: Any) -> Mapping[str, Any]:
    if not isinstance(value, Mapping):
        raise ConfigError(where, f"must be a table, got {type(value).__name__}")
    return value


def _check_keys(where: str, data: Mapping[str, Any], allowed: set[str]) -> None:
    unknown = sorted(set(data) - allowed)
    if unknown:
        prefix = f"{where}." if where else ""
        raise ConfigError(f"{prefix}{unknown[0]}", f"unknown key; allowed keys are {sorted(allowed)}")


def _base_url(where: str, value: Any) -> str:
    url = _string(where, value)
    parts = urlsplit(url)
    if "@" in parts.netloc:  # checked first, and the URL not echoed: it holds a secret
        raise ConfigError(
            where,
            "must not carry credentials (user:password@host): the router authenticates with the key in "
            "api_key_env only, so they would not be sent, and they would show wherever the URL does",
        )
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ConfigError(where, f"bad URL {url!r}: expected http(s)://host[:port]/path")
    try:
        port = parts.port
    except ValueError:
        port = 0
    if port == 0:
        raise ConfigError(where, f"bad URL {url!r}: invalid port")
    return url.rstrip("/")


def _api_key_env(where: str, value: Any) -> str:
    """The name of the variable holding the key: it must be set, non-empty and printable at load.

    The key is never shown, only the variable's name: a call without a usable key would fail
    at the endpoint (401, or 500 behind some gateways) and be counted against the model.
    """
    name = _string(where, value)
    key = read_key(name)
    if key is None:
        raise ConfigError(where, f"environment variable {name} is unset or empty")
    if any(ord(ch) < 0x20 or ord(ch) == 0x7F for ch in key):
        raise ConfigError(
            where, f"environment variable {name} holds a key with a newline or control character (not shown)"
        )
    return name


def _store_url(value: Any) -> str:
    url = _string("store", value)
    try:
        parsed = make_url(url)
    except ArgumentError:
        raise ConfigError("store", f"bad database URL {url!r}") from None
    if parsed.get_backend_name() not in ("sqlite", "postgresql"):
        raise ConfigError(
            "store", f"unsupported database {parsed.get_backend_name()!r}: use sqlite:// or postgresql+psycopg://"
        )
    return url


def _name(where: str, name: str, limit: int) -> None:
    if not name.strip() or len(name) > limit or any(ord(c) < 32 for c in name):
        raise ConfigError(where, f"names must be 1 to {limit} printable characters, got {name[: limit + 8]!r}")


def _model(name: str, data: Any) -> ModelConfig:
    where = f"models.{name}"
    _name(where, name, MODEL_CHARS)
    data = _table(where, data)
    _check_keys(where, data, _MODEL_KEYS)
    if "base_url" not in data:
        raise ConfigError(f"{where}.base_url", "is required")
    kind = data.get("kind", "chat")
    if kind not in KINDS:
        raise ConfigError(f"{where}.kind", f"must be one of {list(KINDS)}, got {kind!r}")
    base_url = _base_url(f"{where}.base_url", data["base_url"])
    if not _VERSION_PATH.search(urlsplit(base_url).path):
        warnings.warn(
            f"{where}.base_url {base_url!r} has no version path such as /v1: OpenAI-compatible servers answer 404 without it",
            stacklevel=4,
        )
    return ModelConfig(
        name=name,
        base_url=base_url,
        kind=kind,
        model=_string(f"{where}.model", data["model"]) if "model" in data else "",
        api_key_env=_optional(_api_key_env, where, data, "api_key_env"),
        timeout_s=_number(f"{where}.timeout_s", data.get("timeout_s", 10.0), positive=True),
        price_in_per_1k=_number(f"{where}.price_in_per_1k", data.get("price_in_per_1k", 0.0), minimum=0.0),
        price_out_per_1k=_number(f"{where}.price_out_per_1k", data.get("price_out_per_1k", 0.0), minimum=0.0),
        max_in_flight=_integer(f"{where}.max_in_flight", data.get("max_in_flight", 64), 1),
        dim=_optional(_integer, where, data, "dim", 1),
        context_window=_optional(_integer, where, data, "context_window", 1),
        max_response_bytes=_optional(_integer, where, data, "max_response_bytes", 1024),
        space=_string(f"{where}.space", data["space"]) if "space" in data else "",
        first_token_timeout_s=_optional(_number, where, data, "first_token_timeout_s", positive=True),
    )


def _route(task: str, data: Any, models: Mapping[str, ModelConfig], objective: Objective) -> RouteConfig:
    where = f"routes.{task}"
    _name(where, task, TASK_CHARS)
    data = _table(where, data)
    names = data.get("models")
    if not isinstance(names, list) or not names:
        raise ConfigError(f"{where}.models", "must be a non-empty list of model names")
    for name in names:
        if not isinstance(name, str):
            raise ConfigError(f"{where}.models", f"model names must be strings, got {name!r}")
        if name not in models:
            raise ConfigError(f"{where}.models", f"unknown model {name!r}; defined models are {sorted(models)}")
    if len(set(names)) != len(names):
        raise ConfigError(f"{where}.models", f"lists a model twice: {names}")
    kinds = {models[n].kind for n in names}
    if len(kinds) > 1:
        raise ConfigError(f"{where}.models", "mixes chat and embedding models")
    if kinds == {"embedding"}:
        spaces = {(models[n].embedding_space, models[n].dim) for n in names}
        if len(spaces) > 1:
            raise ConfigError(
                f"{where}.models",
                "embedding models of one route must be compatible (same `space` and `dim`); "
                f"got {sorted(spaces, key=str)}",
            )
    policy = data.get("policy", "thompson")
    if not isinstance(policy, str) or policy not in POLICIES:
        raise ConfigError(f"{where}.policy", f"unknown policy {policy!r}; choose from {sorted(POLICIES)}")
    hedge = _optional(_number, where, data, "hedge_quantile")
    if hedge is not None and not 0.0 < hedge < 1.0:
        raise ConfigError(f"{where}.hedge_quantile", f"must be in (0, 1), got {hedge!r}")
    validators = data.get("validators", [])
    if not isinstance(validators, list):
        raise ConfigError(f"{where}.validators", "must be a list")
    try:
        build_validators(validators)
    except ValueError as exc:
        raise ConfigError(f"{where}.validators", str(exc)) from None
    measure = _choice(f"{where}.latency_measure", data.get("latency_measure", "total"), ("total", "ttft"))
    options = {k: v for k, v in data.items() if k not in _ROUTE_KEYS}
    for key, value in options.items():
        expected = OPTION_TYPES.get(key)
        if expected is int:
            _integer(f"{where}.{key}", value, 0)
        elif expected is float:
            _number(f"{where}.{key}", value)
        elif expected is bool:
            _bool(f"{where}.{key}", value)
    try:
        make_policy(policy, names, objective, **options)
    except (ValueError, TypeError) as exc:
        raise ConfigError(where, str(exc)) from None
    max_attempts = _integer(f"{where}.max_attempts", data["max_attempts"], 1) if "max_attempts" in data else None
    load = _choice(f"{where}.load", data.get("load", "off"), ("adaptive", "off"))
    budget = _optional(_number, where, data, "budget_per_call", positive=True)
    if budget is not None and not any(models[n].price_in_per_1k or models[n].price_out_per_1k for n in names):
        raise ConfigError(
            f"{where}.budget_per_call",
            "no model of the route has a price (price_in_per_1k, price_out_per_1k): every call would cost 0",
        )
    return RouteConfig(
        task_type=task,
        models=tuple(names),
        policy=policy,
        options=dict(options),
        hedge_quantile=hedge,
        validators=tuple(validators),
        latency_measure=measure,
        max_attempts=max_attempts,
        load=load,
        budget_per_call=budget,
    )


def _breaker(data: Any) -> BreakerConfig:
    data = _table("breaker", data)
    _check_keys("breaker", data, {f.name for f in fields(BreakerConfig)})
    d = BreakerConfig()
    when = _choice("breaker.when_all_cooling", data.get("when_all_cooling", d.when_all_cooling), ("wait", "try"))
    rate = _number("breaker.failure_rate", data.get("failure_rate", d.failure_rate), positive=True)
    if rate > 1:
        raise ConfigError("breaker.failure_rate", f"must be in (0, 1], got {rate!r}")
    cooldown = _number("breaker.cooldown_s", data.get("cooldown_s", d.cooldown_s), minimum=0.0)
    cap = _number("breaker.max_cooldown_s", data.get("max_cooldown_s", d.max_cooldown_s), minimum=0.0)
    if cap < cooldown:
        raise ConfigError("breaker.max_cooldown_s", f"must be >= cooldown_s ({cooldown}), got {cap!r}")
    return BreakerConfig(
        consecutive_failures=_integer(
            "breaker.consecutive_failures", data.get("consecutive_failures", d.consecutive_failures), 1
        ),
        failure_rate=rate,
        window=_integer("breaker.window", data.get("window", d.window), 1),
        min_calls=_integer("breaker.min_calls", data.get("min_calls", d.min_calls), 1),
        cooldown_s=cooldown,
        max_cooldown_s=cap,
        when_all_cooling=when,
        latency_window=_integer("breaker.latency_window", data.get("latency_window", d.latency_window), 1),
    )


def _load(data: Any) -> LoadConfig:
    data = _table("load", data)
    _check_keys("load", data, {f.name for f in fields(LoadConfig)})
    d = LoadConfig()
    limits = {
        key: _integer(f"load.{key}", data.get(key, getattr(d, key)), 1)
        for key in ("initial", "min_limit", "max_limit", "window", "fast_after")
    }
    return LoadConfig(  # which checks that the bounds hold together
        **limits,
        tolerance=_number("load.tolerance", data.get("tolerance", d.tolerance)),
        baseline_s=_number("load.baseline_s", data.get("baseline_s", d.baseline_s)),
        fast_factor=_number("load.fast_factor", data.get("fast_factor", d.fast_factor)),
    )


def _statuses(value: Any) -> frozenset[int]:
    if not isinstance(value, list):
        raise ConfigError("rejecting_statuses", f"must be a list of HTTP statuses, got {value!r}")
    for status in value:
        if isinstance(status, bool) or not isinstance(status, int) or not 400 <= status <= 499:
            raise ConfigError("rejecting_statuses", f"must hold 4xx statuses (400..499), got {status!r}")
    return frozenset(value)


def _objective(data: Any) -> Objective:
    data = _table("objective", data)
    _check_keys("objective", data, {"w_latency", "w_cost", "kind"})
    kind = data.get("kind", "utility")
    if kind not in Objective.KINDS:
        raise ConfigError("objective.kind", f"must be one of {list(Objective.KINDS)}, got {kind!r}")
    return Objective(
        w_latency=_number("objective.w_latency", data.get("w_latency", Objective.w_latency), minimum=0.0),
        w_cost=_number("objective.w_cost", data.get("w_cost", Objective.w_cost), minimum=0.0),
        kind=kind,
    )


def _server(data: Any, routes: Mapping[str, RouteConfig]) -> ServerConfig:
    data = _table("server", data)
    _check_keys("server", data, {"api_keys_env", "keys"})
    env = _optional(_string, "server", data, "api_keys_env")
    keys = {}
    specs = _table("server.keys", data.get("keys", {}))
    if specs and env is None:
        raise ConfigError("server.keys", "limits per key need server.api_keys_env (the variable holding the keys)")
    for key_id, spec in specs.items():
        where = f"server.keys.{key_id}"
        spec = _table(where, spec)
        _check_keys(where, spec, {"routes", "requests_per_minute", "spend_per_day"})
        allowed = spec.get("routes")
        if allowed is not None:
            if not isinstance(allowed, list) or not all(isinstance(r, str) for r in allowed):
                raise ConfigError(f"{where}.routes", "must be a list of route names")
            unknown = sorted(set(allowed) - set(routes))
            if unknown:
                raise ConfigError(f"{where}.routes", f"unknown route {unknown[0]!r}; routes are {sorted(routes)}")
        keys[key_id] = KeyLimits(
            routes=tuple(allowed) if allowed is not None else None,
            requests_per_minute=_optional(_number, where, spec, "requests_per_minute", positive=True),
            spend_per_day=_optional(_number, where, spec, "spend_per_day", minimum=0.0),
        )
    return ServerConfig(api_keys_env=env, keys=keys)


def _server_dict(server: ServerConfig) -> dict[str, Any]:
    out: dict[str, Any] = {"keys": {}}
    if server.api_keys_env is not None:
        out["api_keys_env"] = server.api_keys_env
    for key_id, limits in server.keys.items():
        entry = {k: v for k, v in _fields(limits).items() if v is not None}
        if "routes" in entry:
            entry["routes"] = list(entry["routes"])
        out["keys"][key_id] = entry
    return out


def _parse(data: Mapping[str, Any]) -> Config:
    data = _table("config", data)
    _check_keys("", data, _TOP_KEYS)
    raw_models = _table("models", data.get("models", {}))
    if not raw_models:
        raise ConfigError("models", "at least one model is required")
    models = {name: _model(name, spec) for name, spec in raw_models.items()}
    objective = _objective(data.get("objective", {}))
    raw_routes = _table("routes", data.get("routes", {}))
    if not raw_routes:
        raise ConfigError("routes", "at least one route is required")
    routes = {task: _route(task, spec, models, objective) for task, spec in raw_routes.items()}
    log_prompts = _bool("log_prompts", data.get("log_prompts", False))
    pgbouncer = _bool("pgbouncer", data.get("pgbouncer", False))
    durability = _choice("durability", data.get("durability", "batched"), ("batched", "journal"))
    return Config(
        models=models,
        routes=routes,
        durability=durability,
        store_timeout_s=_number("store_timeout_s", data.get("store_timeout_s", 2.0), positive=True),
        feedback_window=_integer("feedback_window", data.get("feedback_window", 100_000), 1),
        feedback_window_s=_number("feedback_window_s", data.get("feedback_window_s", 86_400.0), positive=True),
        store=_store_url(data.get("store", DEFAULT_STORE)),
        deadline_s=_number("deadline_s", data.get("deadline_s", 30.0), positive=True),
        objective=objective,
        log_prompts=log_prompts,
        seed=_optional(_integer, "", data, "seed", 0),
        breaker=_breaker(data.get("breaker", {})),
        journal_dir=_optional(_string, "", data, "journal_dir"),
        refresh_s=_optional(_number, "", data, "refresh_s", positive=True),
        pgbouncer=pgbouncer,
        max_attempts=_integer("max_attempts", data.get("max_attempts", 4), 1),
        rejecting_statuses=_statuses(data.get("rejecting_statuses", sorted(REJECTING_DEFAULT))),
        server=_server(data.get("server", {}), routes),
        load=_load(data.get("load", {})),
    )
