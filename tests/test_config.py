"""Config loading and validation: valid dicts and TOML files load, every invalid field raises
ConfigError naming it, configs round-trip through to_dict, and API keys never leak into reprs."""

from __future__ import annotations

import copy
import math
import os
import warnings
from typing import Any
from unittest import mock

import pytest
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st
from in_process import fake_router

from zeta_adaptive import Config, ConfigError, ModelConfig, load_config
from zeta_adaptive._policies import Objective


def base_config(tmp_path) -> dict[str, Any]:
    return {
        "store": f"sqlite:///{tmp_path}/x.db",
        "deadline_s": 12.5,
        "log_prompts": False,
        "seed": 7,
        "objective": {"w_latency": 0.2, "w_cost": 0.5, "kind": "utility"},
        "models": {
            "fast": {"base_url": "http://localhost:8001/v1/", "timeout_s": 2, "price_in_per_1k": 0.1},
            "big": {"base_url": "https://big.internal:8443/v1", "model": "big-70b", "max_in_flight": 8},
            "emb1": {"base_url": "http://emb:9000/v1", "kind": "embedding", "dim": 384, "space": "minilm"},
            "emb2": {"base_url": "http://emb2:9000/v1", "kind": "embedding", "dim": 384, "space": "minilm"},
        },
        "routes": {
            "simple": {"models": ["fast", "big"], "policy": "static"},
            "code": {"models": ["big", "fast"], "policy": "thompson", "discount": 0.99, "samples": 200},
            "embedding": {"models": ["emb1", "emb2"], "policy": "random", "seed": 3},
        },
    }


def expect_error(data: dict[str, Any], field: str, *fragments: str) -> ConfigError:
    with pytest.raises(ConfigError) as info:
        Config.from_dict(data)
    err = info.value
    assert err.field == field, f"field {err.field!r} != {field!r} ({err})"
    msg = str(err)
    assert msg.startswith(f"{field}: ")
    for fragment in fragments:
        assert fragment in msg, f"{fragment!r} not in {msg!r}"
    return err


# -- valid configs ---------------------------------------------------------------------------------


def test_valid_dict_loads(tmp_path):
    cfg = Config.from_dict(base_config(tmp_path))
    assert set(cfg.models) == {"fast", "big", "emb1", "emb2"}
    fast, big = cfg.models["fast"], cfg.models["big"]
    assert fast.base_url == "http://localhost:8001/v1"  # trailing slash stripped
    assert fast.timeout_s == 2.0 and isinstance(fast.timeout_s, float)
    assert fast.backend_model == "fast" and big.backend_model == "big-70b"
    assert big.max_in_flight == 8 and big.kind == "chat"
    assert cfg.models["emb1"].embedding_space == "minilm" and cfg.models["emb1"].dim == 384
    assert cfg.routes["code"].models == ("big", "fast")
    assert cfg.routes["code"].policy == "thompson"
    assert dict(cfg.routes["code"].options) == {"discount": 0.99, "samples": 200}
    assert cfg.routes["simple"].policy == "static"
    assert cfg.deadline_s == 12.5 and cfg.seed == 7 and cfg.log_prompts is False
    assert cfg.objective == Objective(w_latency=0.2, w_cost=0.5, kind="utility")
    assert math.isclose(fast.cost(2000, 1000), 0.2)


def test_defaults(tmp_path):
    cfg = Config.from_dict(
        {
            "store": f"sqlite:///{tmp_path}/x.db",
            "models": {"m": {"base_url": "http://h"}},
            "routes": {"t": {"models": ["m"]}},
        }
    )
    m = cfg.models["m"]
    assert (m.kind, m.timeout_s, m.max_in_flight, m.api_key_env, m.dim) == ("chat", 10.0, 64, None, None)
    assert cfg.routes["t"].policy == "thompson"
    assert cfg.deadline_s == 30.0 and cfg.seed is None and cfg.objective == Objective()


def test_from_toml(tmp_path, monkeypatch):
    monkeypatch.setenv("SMALL_KEY", "k")
    path = tmp_path / "zeta.toml"
    path.write_text(
        f"""
store = "sqlite:///{tmp_path}/x.db"
deadline_s = 20
seed = 1

[objective]
w_latency = 0.05

[models.small]
base_url = "http://127.0.0.1:8000/v1"
timeout_s = 1.5
api_key_env = "SMALL_KEY"

[models.large]
base_url = "http://127.0.0.1:8001/v1"
price_out_per_1k = 0.6

[routes.simple]
models = ["small", "large"]
policy = "static"

[routes.reasoning]
models = ["large", "small"]
discount = 0.95
""",
        encoding="utf-8",
    )
    cfg = Config.from_toml(path)
    assert cfg.models["small"].timeout_s == 1.5
    assert cfg.models["small"].api_key_env == "SMALL_KEY"
    assert cfg.models["large"].price_out_per_1k == 0.6
    assert cfg.routes["reasoning"].policy == "thompson"
    assert cfg.routes["reasoning"].options == {"discount": 0.95}
    assert cfg.deadline_s == 20.0 and cfg.seed == 1
    assert cfg.objective.w_latency == 0.05
    # the same file through load_config (str and Path) gives an equal config
    assert load_config(str(path)) == cfg == load_config(path)
    assert load_config(cfg) is cfg


def test_from_toml_missing_file(tmp_path):
    path = tmp_path / "nope.toml"
    with pytest.raises(ConfigError) as info:
        Config.from_toml(path)
    assert info.value.field == str(path)
    assert "cannot read config file" in str(info.value)


def test_from_toml_directory(tmp_path):
    with pytest.raises(ConfigError) as info:
        Config.from_toml(tmp_path)
    assert info.value.field == str(tmp_path)
    assert "cannot read config file" in str(info.value)


def test_from_toml_invalid_syntax(tmp_path):
    path = tmp_path / "bad.toml"
    path.write_text('store = "sqlite:///x.db"\n[models\nbase_url = 1\n', encoding="utf-8")
    with pytest.raises(ConfigError) as info:
        Config.from_toml(path)
    assert info.value.field == str(path)
    assert "invalid TOML" in str(info.value)


def test_from_toml_invalid_utf8(tmp_path):
    """A file that is not UTF-8 is an invalid TOML file: it must raise ConfigError, not UnicodeDecodeError."""
    path = tmp_path / "latin1.toml"
    path.write_bytes('store = "sqlite:///caf\xe9.db"\n'.encode("latin-1"))
    with pytest.raises(ConfigError) as info:
        Config.from_toml(path)
    assert info.value.field == str(path)
    assert "invalid TOML" in str(info.value)


def test_from_toml_validation_error_names_field(tmp_path):
    path = tmp_path / "z.toml"
    path.write_text('[models.m]\nbase_url = "http://h"\ntimeout_s = -1\n[routes.t]\nmodels = ["m"]\n', encoding="utf-8")
    with pytest.raises(ConfigError) as info:
        Config.from_toml(path)
    assert info.value.field == "models.m.timeout_s"


# -- invalid configs -------------------------------------------------------------------------------


def test_unknown_model_in_route(tmp_path):
    d = base_config(tmp_path)
    d["routes"]["simple"]["models"] = ["fast", "ghost"]
    expect_error(d, "routes.simple.models", "unknown model 'ghost'")


@pytest.mark.parametrize("value", [-1, 0, 0.0, -0.5])
def test_non_positive_timeout(tmp_path, value):
    d = base_config(tmp_path)
    d["models"]["fast"]["timeout_s"] = value
    expect_error(d, "models.fast.timeout_s", "must be > 0")


def test_duplicate_model_in_route(tmp_path):
    d = base_config(tmp_path)
    d["routes"]["simple"]["models"] = ["fast", "big", "fast"]
    expect_error(d, "routes.simple.models", "twice")


@pytest.mark.parametrize("models", [[], "fast", None])
def test_route_models_must_be_non_empty_list(tmp_path, models):
    d = base_config(tmp_path)
    d["routes"]["simple"]["models"] = models
    expect_error(d, "routes.simple.models", "non-empty list")


def test_unknown_policy(tmp_path):
    d = base_config(tmp_path)
    d["routes"]["simple"]["policy"] = "ucb"
    expect_error(d, "routes.simple.policy", "unknown policy 'ucb'")


@pytest.mark.parametrize(
    "url, fragment",
    [
        ("localhost:8000/v1", "bad URL"),
        ("//host:8000/v1", "bad URL"),
        ("ftp://host/v1", "bad URL"),
        ("http://", "bad URL"),
        ("http://host:99999/v1", "invalid port"),
        ("http://host:abc/v1", "invalid port"),
        ("http://host:-1/v1", "invalid port"),
        ("", "non-empty string"),
    ],
)
def test_bad_base_url(tmp_path, url, fragment):
    d = base_config(tmp_path)
    d["models"]["fast"]["base_url"] = url
    expect_error(d, "models.fast.base_url", fragment)


@pytest.mark.parametrize(
    "url", ["http://alice:s3cret-pw@host:8000/v1", "https://s3cret-pw@host/v1", "http://:s3cret-pw@[::1]:8/v1"]
)
def test_a_base_url_with_credentials_is_refused_without_showing_them(tmp_path, url):
    """Credentials in a base URL would never be sent (the router authenticates with api_key_env's key)
    and would show in every repr of the config: refused, and the error does not repeat them."""
    d = base_config(tmp_path)
    d["models"]["fast"]["base_url"] = url
    with pytest.raises(ConfigError, match="must not carry credentials") as caught:
        Config.from_dict(d)
    assert caught.value.field == "models.fast.base_url" and "s3cret-pw" not in str(caught.value)


def test_base_url_port_zero_rejected(tmp_path):
    """Port 0 cannot be connected to; it is as bad as port 99999."""
    d = base_config(tmp_path)
    d["models"]["fast"]["base_url"] = "http://host:0/v1"
    expect_error(d, "models.fast.base_url")


def test_missing_base_url(tmp_path):
    d = base_config(tmp_path)
    del d["models"]["fast"]["base_url"]
    expect_error(d, "models.fast.base_url", "required")


@pytest.mark.parametrize(
    "url, fragment",
    [
        ("mysql://x", "unsupported database 'mysql'"),
        ("not a url", "bad database URL"),
        ("", "non-empty string"),
        (42, "non-empty string"),
    ],
)
def test_bad_store_url(tmp_path, url, fragment):
    d = base_config(tmp_path)
    d["store"] = url
    expect_error(d, "store", fragment)


def test_unknown_top_level_key(tmp_path):
    d = base_config(tmp_path)
    d["modles"] = {}
    expect_error(d, "modles", "unknown key")


def test_unknown_model_key(tmp_path):
    d = base_config(tmp_path)
    d["models"]["fast"]["temperature"] = 0.3
    expect_error(d, "models.fast.temperature", "unknown key")


def test_unknown_objective_key_and_kind(tmp_path):
    d = base_config(tmp_path)
    d["objective"]["w_quality"] = 1
    expect_error(d, "objective.w_quality", "unknown key")
    d = base_config(tmp_path)
    d["objective"]["kind"] = "regret"
    expect_error(d, "objective.kind", "regret")


def test_unknown_model_kind(tmp_path):
    d = base_config(tmp_path)
    d["models"]["fast"]["kind"] = "rerank"
    expect_error(d, "models.fast.kind", "rerank")


def test_mixing_chat_and_embedding_in_route(tmp_path):
    d = base_config(tmp_path)
    d["routes"]["simple"]["models"] = ["fast", "emb1"]
    expect_error(d, "routes.simple.models", "mixes chat and embedding")


def test_incompatible_embedding_dims(tmp_path):
    d = base_config(tmp_path)
    d["models"]["emb2"]["dim"] = 768
    expect_error(d, "routes.embedding.models", "compatible")


def test_incompatible_embedding_spaces(tmp_path):
    d = base_config(tmp_path)
    d["models"]["emb2"]["space"] = "bge"
    expect_error(d, "routes.embedding.models", "compatible")


def test_embedding_space_defaults_to_backend_model(tmp_path):
    d = base_config(tmp_path)
    for name in ("emb1", "emb2"):
        del d["models"][name]["space"]
    # different model names -> different spaces
    expect_error(d, "routes.embedding.models", "compatible")
    d["models"]["emb1"]["model"] = d["models"]["emb2"]["model"] = "bge-small"
    cfg = Config.from_dict(d)
    assert cfg.models["emb1"].embedding_space == cfg.models["emb2"].embedding_space == "bge-small"


@pytest.mark.parametrize(
    "policy, option",
    [("static", "prior_alpha"), ("random", "samples"), ("thompson", "temperature")],
)
def test_unknown_policy_option(tmp_path, policy, option):
    d = base_config(tmp_path)
    d["routes"]["simple"]["policy"] = policy
    d["routes"]["simple"][option] = 2
    expect_error(d, "routes.simple", "unknown option", option)


@pytest.mark.parametrize("value", [0, 0.0, -0.5, 1.5])
def test_discount_out_of_range(tmp_path, value):
    d = base_config(tmp_path)
    d["routes"]["simple"]["discount"] = value
    expect_error(d, "routes.simple", "discount")


@pytest.mark.parametrize(
    "option, value",
    [
        ("discount", "0.9"),
        ("discount", True),
        ("seed", 1.5),
        ("seed", -1),
        ("seed", True),
        ("samples", "100"),
        ("prior_alpha", None),
    ],
)
def test_policy_option_types(tmp_path, option, value):
    d = base_config(tmp_path)
    d["routes"]["code"][option] = value
    expect_error(d, f"routes.code.{option}")


def test_thompson_option_ranges(tmp_path):
    d = base_config(tmp_path)
    d["routes"]["code"]["samples"] = 5
    expect_error(d, "routes.code", "samples")
    d = base_config(tmp_path)
    d["routes"]["code"]["prior_beta"] = 0
    expect_error(d, "routes.code", "prior")


@pytest.mark.parametrize("key", ["timeout_s", "price_in_per_1k", "price_out_per_1k"])
@pytest.mark.parametrize("value", ["10", True, False, None, [1]])
def test_wrong_type_for_number(tmp_path, key, value):
    d = base_config(tmp_path)
    d["models"]["fast"][key] = value
    expect_error(d, f"models.fast.{key}", "finite number")


@pytest.mark.parametrize("value", [math.nan, math.inf, -math.inf])
@pytest.mark.parametrize(
    "path",
    [
        ("models", "fast", "timeout_s"),
        ("models", "big", "price_in_per_1k"),
        ("deadline_s",),
        ("objective", "w_latency"),
    ],
)
def test_non_finite_numbers(tmp_path, path, value):
    d = base_config(tmp_path)
    target = d
    for part in path[:-1]:
        target = target[part]
    target[path[-1]] = value
    expect_error(d, ".".join(path), "finite")


def test_non_finite_numbers_in_toml(tmp_path):
    path = tmp_path / "nan.toml"
    path.write_text(
        '[models.m]\nbase_url = "http://h"\ntimeout_s = nan\n[routes.t]\nmodels = ["m"]\n', encoding="utf-8"
    )
    with pytest.raises(ConfigError) as info:
        Config.from_toml(path)
    assert info.value.field == "models.m.timeout_s"


@pytest.mark.parametrize("key", ["price_in_per_1k", "price_out_per_1k"])
def test_negative_prices(tmp_path, key):
    d = base_config(tmp_path)
    d["models"]["big"][key] = -0.01
    expect_error(d, f"models.big.{key}", ">= 0")


def test_negative_objective_weight(tmp_path):
    d = base_config(tmp_path)
    d["objective"]["w_cost"] = -1
    expect_error(d, "objective.w_cost", ">= 0")


@pytest.mark.parametrize(
    "value, fragment", [(0, ">= 1"), (-3, ">= 1"), (2.5, "integer"), ("8", "integer"), (True, "integer")]
)
def test_max_in_flight(tmp_path, value, fragment):
    d = base_config(tmp_path)
    d["models"]["fast"]["max_in_flight"] = value
    expect_error(d, "models.fast.max_in_flight", fragment)


@pytest.mark.parametrize("value, fragment", [(0, "> 0"), (-1, "> 0"), (0.0, "> 0"), ("30", "finite number")])
def test_deadline(tmp_path, value, fragment):
    d = base_config(tmp_path)
    d["deadline_s"] = value
    expect_error(d, "deadline_s", fragment)


@pytest.mark.parametrize("value", [0, -1, 1.0, "3", True])
def test_bad_embedding_dim(tmp_path, value):
    d = base_config(tmp_path)
    d["models"]["emb1"]["dim"] = value
    expect_error(d, "models.emb1.dim")


@pytest.mark.parametrize("value", ["yes", 1, None])
def test_log_prompts_must_be_bool(tmp_path, value):
    d = base_config(tmp_path)
    d["log_prompts"] = value
    expect_error(d, "log_prompts", "true or false")


@pytest.mark.parametrize("value", [-1, 1.0, "1", True])
def test_bad_seed(tmp_path, value):
    d = base_config(tmp_path)
    d["seed"] = value
    expect_error(d, "seed")


def test_no_models_or_routes(tmp_path):
    d = base_config(tmp_path)
    d["models"] = {}
    expect_error(d, "models", "at least one")
    d = base_config(tmp_path)
    d["routes"] = {}
    expect_error(d, "routes", "at least one")
    d = base_config(tmp_path)
    d["routes"] = ["simple"]
    expect_error(d, "routes", "table")


def test_api_key_env_must_be_string(tmp_path):
    d = base_config(tmp_path)
    d["models"]["fast"]["api_key_env"] = 5
    expect_error(d, "models.fast.api_key_env")


@pytest.mark.parametrize("key, value", [("model", 0), ("model", ["big-70b"]), ("space", False)])
def test_wrong_type_for_string_field_is_rejected(tmp_path, key, value):
    """A non-string `model` / `space` must be rejected, not silently replaced by ''."""
    d = base_config(tmp_path)
    d["models"]["big"][key] = value
    expect_error(d, f"models.big.{key}")


@pytest.mark.parametrize(
    "mutate, field",
    [
        (lambda d: d["routes"]["simple"].__setitem__("policy", ["static"]), "routes.simple.policy"),
        (lambda d: d["routes"]["simple"].__setitem__("models", [["fast"]]), "routes.simple.models"),
    ],
)
def test_unhashable_values_raise_config_error(tmp_path, mutate, field):
    """A list where a name is expected is a config error, not a TypeError from a dict lookup."""
    d = base_config(tmp_path)
    mutate(d)
    expect_error(d, field)


def test_error_is_a_value_error(tmp_path):
    d = base_config(tmp_path)
    d["deadline_s"] = -1
    with pytest.raises(ValueError):
        Config.from_dict(d)


def test_from_dict_does_not_mutate_input(tmp_path):
    d = base_config(tmp_path)
    before = copy.deepcopy(d)
    Config.from_dict(d)
    assert d == before


# -- round trip (hypothesis) -----------------------------------------------------------------------

names = st.text(alphabet="abcdefghijklmnopqrstuvwxyz0123456789_-", min_size=1, max_size=10)
hosts = st.sampled_from(["localhost", "127.0.0.1", "gpu-1.internal", "models.example.com", "[::1]"])
positive = st.floats(min_value=1e-3, max_value=1e4, allow_nan=False, allow_infinity=False)
prices = st.floats(min_value=0.0, max_value=100.0, allow_nan=False, allow_infinity=False)


@st.composite
def model_specs(draw, kind: str, dim: int | None = None, space: str = ""):
    scheme = draw(st.sampled_from(["http", "https"]))
    port = draw(st.integers(1, 65535))
    path = draw(st.sampled_from(["", "/v1", "/openai/v1"]))
    spec: dict[str, Any] = {
        "base_url": f"{scheme}://{draw(hosts)}:{port}{path}",
        "kind": kind,
        "timeout_s": draw(positive),
        "price_in_per_1k": draw(prices),
        "price_out_per_1k": draw(prices),
        "max_in_flight": draw(st.integers(1, 512)),
    }
    if draw(st.booleans()):
        spec["model"] = draw(names)
    if draw(st.booleans()):
        spec["api_key_env"] = draw(st.sampled_from(["OPENAI_API_KEY", "VLLM_KEY", "K"]))
    if kind == "embedding":
        spec["dim"] = dim
        spec["space"] = space
    return spec


@st.composite
def route_specs(draw, model_names: list[str]):
    chosen = draw(st.lists(st.sampled_from(model_names), min_size=1, max_size=len(model_names), unique=True))
    policy = draw(st.sampled_from(["static", "random", "thompson"]))
    spec: dict[str, Any] = {"models": chosen, "policy": policy}
    if draw(st.booleans()):
        spec["discount"] = draw(st.floats(min_value=0.0, max_value=1.0, exclude_min=True))
    if draw(st.booleans()):
        spec["seed"] = draw(st.integers(0, 2**32))
    if policy == "thompson":
        if draw(st.booleans()):
            spec["prior_alpha"] = draw(st.floats(min_value=0.01, max_value=10))
        if draw(st.booleans()):
            spec["samples"] = draw(st.sampled_from([64, 256, 1000]))
    if draw(st.booleans()):
        spec["hedge_quantile"] = draw(st.floats(min_value=0.01, max_value=0.99))
    return spec


@st.composite
def config_dicts(draw):
    chat_names = draw(st.lists(names, min_size=1, max_size=5, unique=True))
    emb_names = draw(st.lists(names.filter(lambda n: n not in chat_names), max_size=3, unique=True))
    dim = draw(st.integers(1, 4096))
    space = draw(st.sampled_from(["minilm", "bge"]))
    models = {n: draw(model_specs("chat")) for n in chat_names}
    models.update({n: draw(model_specs("embedding", dim, space)) for n in emb_names})
    tasks = draw(st.lists(names, min_size=1, max_size=4, unique=True))
    routes = {t: draw(route_specs(chat_names)) for t in tasks}
    if emb_names:
        routes["embedding"] = draw(route_specs(emb_names))
    data: dict[str, Any] = {
        "models": models,
        "routes": routes,
        "store": draw(
            st.sampled_from(["sqlite:///zeta.db", "sqlite:////tmp/z.db", "postgresql+psycopg://u:p@db:5432/zeta"])
        ),
        "deadline_s": draw(positive),
        "log_prompts": draw(st.booleans()),
        "objective": {
            "w_latency": draw(prices),
            "w_cost": draw(prices),
            "kind": draw(st.sampled_from(["utility", "ratio"])),
        },
    }
    if draw(st.booleans()):
        data["seed"] = draw(st.integers(0, 2**31))
    if draw(st.booleans()):
        cooldown = draw(st.floats(min_value=0.0, max_value=60.0))
        data["breaker"] = {
            "consecutive_failures": draw(st.integers(1, 20)),
            "failure_rate": draw(st.floats(min_value=0.05, max_value=1.0)),
            "cooldown_s": cooldown,
            "max_cooldown_s": cooldown + draw(st.floats(min_value=0.0, max_value=600.0)),
            "when_all_cooling": draw(st.sampled_from(["wait", "try"])),
        }
    if draw(st.booleans()):
        data["journal_dir"] = draw(st.sampled_from(["/tmp/zeta-journal", "journal"]))
    return data


@settings(
    max_examples=40,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.too_slow],
    phases=[Phase.explicit, Phase.generate],  # no shrinking: keeps a failing run fast; see the minimal tests below
)
@given(config_dicts())
@pytest.mark.slow
def test_round_trip(data):
    with mock.patch.dict(os.environ, {"OPENAI_API_KEY": "k", "VLLM_KEY": "k", "K": "k"}):  # keys must be set
        _check_round_trip(data)


def _check_round_trip(data):
    cfg = Config.from_dict(data)
    out = cfg.to_dict()
    again = Config.from_dict(out)
    assert again == cfg
    assert again.to_dict() == out  # stable
    assert cfg.to_dict() == out  # to_dict does not change the config
    # every model and route survives with its values
    assert set(again.models) == set(data["models"]) and set(again.routes) == set(data["routes"])
    for task, spec in data["routes"].items():
        assert again.routes[task].models == tuple(spec["models"])
        assert again.routes[task].policy == spec["policy"]
    # a Config built from a Config's dict is also accepted by load_config
    assert load_config(out) == cfg


def test_round_trip_minimal_config(tmp_path):
    """The smallest config: a model with no `model` / `space` keys must survive to_dict -> from_dict."""
    cfg = Config.from_dict(
        {
            "store": f"sqlite:///{tmp_path}/x.db",
            "models": {"m": {"base_url": "http://h:1"}},
            "routes": {"t": {"models": ["m"]}},
        }
    )
    assert Config.from_dict(cfg.to_dict()) == cfg


def test_round_trip_of_base_config(tmp_path):
    cfg = Config.from_dict(base_config(tmp_path))
    assert Config.from_dict(cfg.to_dict()) == cfg


# -- secrets -----------------------------------------------------------------------------------------

SECRET = "sk-zeta-test-7f3a9c0e1b2d"


def test_reprs_never_contain_api_key(tmp_path, monkeypatch):
    monkeypatch.setenv("ZETA_TEST_API_KEY", SECRET)
    d = base_config(tmp_path)
    d["models"]["fast"]["api_key_env"] = "ZETA_TEST_API_KEY"
    d["models"]["big"]["api_key_env"] = "ZETA_TEST_API_KEY"
    cfg = Config.from_dict(d)
    model = cfg.models["fast"]
    assert isinstance(model, ModelConfig)
    assert "ZETA_TEST_API_KEY" in repr(model)  # the variable's name is fine ...
    assert SECRET not in repr(model)  # ... its value never
    assert SECRET not in str(model)
    assert SECRET not in repr(cfg)
    assert SECRET not in repr(cfg.to_dict())
    with fake_router(cfg) as router:
        assert SECRET not in repr(router)
        assert "Router(" in repr(router)
        assert SECRET not in repr(router.store)
        # a real HttpxBackend reads the key, but its repr must not show it either
        from zeta_adaptive import HttpxBackend

        assert SECRET not in repr(HttpxBackend(cfg.models))


def test_router_repr_names_routes_and_store(tmp_path):
    cfg = Config.from_dict(base_config(tmp_path))
    with fake_router(cfg) as router:
        assert repr(router) == f"Router(routes={sorted(cfg.routes)}, store={router.store.safe_url!r})"
        assert str(tmp_path) in repr(router)


# -- setup errors early (issue 14) -------------------------------------------------------------------


def test_api_key_env_unset_or_empty_is_an_error_naming_the_variable(tmp_path, monkeypatch):
    d = base_config(tmp_path)
    d["models"]["fast"]["api_key_env"] = "ZETA_TEST_UNSET_KEY"
    monkeypatch.delenv("ZETA_TEST_UNSET_KEY", raising=False)
    expect_error(d, "models.fast.api_key_env", "ZETA_TEST_UNSET_KEY", "unset or empty")
    monkeypatch.setenv("ZETA_TEST_UNSET_KEY", "  ")
    expect_error(d, "models.fast.api_key_env", "ZETA_TEST_UNSET_KEY", "unset or empty")


def test_api_key_with_a_control_character_is_refused_without_showing_it(tmp_path, monkeypatch):
    d = base_config(tmp_path)
    d["models"]["fast"]["api_key_env"] = "ZETA_TEST_BAD_KEY"
    monkeypatch.setenv("ZETA_TEST_BAD_KEY", SECRET + "\nX-Injected: 1")
    err = expect_error(d, "models.fast.api_key_env", "control character")
    assert SECRET not in str(err) and SECRET not in repr(err)
    monkeypatch.setenv("ZETA_TEST_BAD_KEY", "  " + SECRET + "\n")  # surrounding whitespace is stripped first
    assert Config.from_dict(d).models["fast"].api_key_env == "ZETA_TEST_BAD_KEY"


def test_base_url_without_a_version_path_warns_naming_the_model(tmp_path):
    d = base_config(tmp_path)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        Config.from_dict(d)  # every base URL has /v1: no warning
    d["models"]["big"]["base_url"] = "https://big.internal:8443"
    with pytest.warns(UserWarning, match=r"models\.big\.base_url.*version path"):
        Config.from_dict(d)


def test_max_response_bytes_defaults_and_validation(tmp_path):
    d = base_config(tmp_path)
    cfg = Config.from_dict(d)
    assert cfg.models["fast"].response_cap() == 8 * 1024 * 1024
    emb = cfg.models["emb1"]
    assert emb.response_cap(10) < emb.response_cap(1000)  # embeddings: sized by input count x dim
    assert emb.response_cap(1000) >= 1000 * 384 * 20
    d["models"]["fast"]["max_response_bytes"] = 65536
    cfg = Config.from_dict(d)
    assert cfg.models["fast"].response_cap() == 65536
    assert Config.from_dict(cfg.to_dict()) == cfg
    d["models"]["fast"]["max_response_bytes"] = 10
    expect_error(d, "models.fast.max_response_bytes", ">= 1024")


@pytest.mark.slow  # a fresh interpreter, or seconds of real time: not in make test-fast
def test_a_per_prompt_policy_loads_in_a_fresh_interpreter():
    """The registry holds linear_thompson: a config naming it loads (and make_policy builds it) in a fresh interpreter."""
    import subprocess
    import sys

    code = (
        "from zeta_adaptive._config import load_config\n"
        "from zeta_adaptive._registry import make_policy\n"
        "m = {'base_url': 'http://127.0.0.1:9/v1'}\n"
        "c = load_config({'store': 'sqlite:///:memory:', 'models': {'a': m, 'b': m},\n"
        "    'routes': {'r': {'models': ['a', 'b'], 'policy': 'linear_thompson', 'feature_bits': 10}}})\n"
        "print(c.routes['r'].policy, type(make_policy('lin_ucb', ['a', 'b'])).__name__)\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["linear_thompson", "LinUCBPolicy"]


def test_a_per_prompt_route_option_that_is_a_flag_must_be_true_or_false(tmp_path):
    d = base_config(tmp_path)
    d["routes"]["code"] = {"models": ["big", "fast"], "policy": "linear_thompson", "idf": "yes"}
    expect_error(d, "routes.code.idf", "true or false", "'yes'")
    d["routes"]["code"]["idf"] = False
    assert Config.from_dict(d).routes["code"].options["idf"] is False
