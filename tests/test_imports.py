"""Start-up cost: heavy packages are imported where they are used, not by ``import zeta_adaptive``.

Each check runs a fresh interpreter and lists the heavy packages in ``sys.modules`` afterwards
(what is loaded, not how long it took: no timing is asserted).
"""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

pytestmark = pytest.mark.slow  # each test imports the package in a fresh interpreter

HEAVY = ("pandas", "matplotlib", "scipy", "jsonschema", "alembic", "tqdm", "sqlalchemy", "numpy", "httpx")


def loaded_after(statement: str) -> set[str]:
    code = f"import json, sys\n{statement}\nprint(json.dumps([m for m in {list(HEAVY)!r} if m in sys.modules]))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=True)
    return set(json.loads(out.stdout.strip().splitlines()[-1]))


def test_import_package_loads_no_heavy_module():
    assert loaded_after("import zeta_adaptive") == set()


def test_router_import_needs_no_pandas_or_analysis_stack():
    loaded = loaded_after("from zeta_adaptive import Router, Store, Objective, make_policy")
    assert not loaded & {"pandas", "matplotlib", "scipy", "jsonschema", "alembic", "tqdm"}
    assert {"numpy", "sqlalchemy", "httpx"} <= loaded  # what a router does need


@pytest.mark.parametrize("name", ["Router", "Store", "Objective", "ZetaError", "load_config", "HttpxBackend"])
def test_public_names_resolve_lazily_and_once(name):
    import zeta_adaptive

    value = getattr(zeta_adaptive, name)
    assert getattr(zeta_adaptive, name) is value
    assert name in dir(zeta_adaptive) and name in zeta_adaptive.__all__


def test_unknown_attribute_is_an_attribute_error():
    import zeta_adaptive

    with pytest.raises(AttributeError, match="no attribute 'Nope'"):
        zeta_adaptive.Nope  # noqa: B018


OLD_NAMES = """
import warnings
warnings.simplefilter("always")
with warnings.catch_warnings(record=True) as caught:
    import zeta_adaptive.store
    from zeta_adaptive.policies import ThompsonPolicy
    from zeta_adaptive import config as old_config
    import zeta_adaptive
    backends = zeta_adaptive.backends
import zeta_adaptive._store, zeta_adaptive._policies, zeta_adaptive._config, zeta_adaptive._backends
print(json.dumps({
    "warnings": [(w.category.__name__, str(w.message), w.filename) for w in caught],
    "same": [zeta_adaptive.store is zeta_adaptive._store, ThompsonPolicy is zeta_adaptive._policies.ThompsonPolicy,
             old_config is zeta_adaptive._config, backends is zeta_adaptive._backends,
             zeta_adaptive.store.Store is zeta_adaptive.Store],
    "spec": zeta_adaptive._store.__spec__.name,
}))
"""


def test_old_module_names_are_deprecated_aliases_of_the_private_modules():
    """``import zeta_adaptive.store``, ``from zeta_adaptive.policies import X``, ``from zeta_adaptive import
    config`` and ``zeta_adaptive.backends.X`` give the private module itself, each with a DeprecationWarning
    naming the old module and pointing at the importing line."""
    out = subprocess.run(
        [sys.executable, "-c", f"import json\n{OLD_NAMES}"], capture_output=True, text=True, timeout=120
    )
    assert out.returncode == 0, out.stderr
    result = json.loads(out.stdout.strip().splitlines()[-1])
    assert result["same"] == [True] * 5
    assert result["spec"] == "zeta_adaptive._store"  # the private module keeps its own spec
    assert [(c, m.split(" is deprecated")[0], f) for c, m, f in result["warnings"]] == [
        ("DeprecationWarning", f"zeta_adaptive.{name}", "<string>")
        for name in ("store", "policies", "config", "backends")
    ]


def test_every_public_name_resolves():
    """Each name in ``__all__`` is re-exported (what experiments and notebooks import instead of private modules)."""
    import zeta_adaptive

    missing = [name for name in zeta_adaptive.__all__ if not hasattr(zeta_adaptive, name)]
    assert missing == []
    assert {"TABLES", "Policy", "POLICIES", "ReplayError", "head_revision"} <= set(zeta_adaptive.__all__)


WARM_START = """
import time
from zeta_adaptive import Router, Store
store = Store({url!r}, journal_dir={journal!r})
now = time.time()
for i, (task, ts) in enumerate([("summed", now - 3600), ("discounted", now - 3600), ("summed", now), ("discounted", now)]):
    row = dict(call_id=f"{{i:032x}}", idx=0, ts=ts, task_type=task, model="m", outcome="ok", status=200,
               latency_s=0.1, tokens_in=1, tokens_out=1, cost=0.0, error=None, router_id="another-process")
    store.put("attempts", row)
assert store.flush(10)
store.close()
routes = {{"summed": {{"models": ["m"], "policy": "thompson"}},
          "discounted": {{"models": ["m"], "policy": "thompson", "discount": 0.9}}}}
config = {{"store": {url!r}, "journal_dir": {journal!r}, "models": {{"m": {{"base_url": "http://127.0.0.1:9/v1"}}}},
           "routes": routes}}
with Router(config) as router:  # old rows: the warm start's sums and tail; new ones: the shared log's read
    learned = {{task: policy.updates for task, policy in router.learner.policies.items()}}
    assert learned == {{"summed": 2, "discounted": 2}}, learned  # each route: one old row, one new
"""


def test_warm_start_and_shared_log_read_load_no_pandas(tmp_path):
    """A router's start (the warm start's sums and tails, then the shared log's newer rows) reads rows
    without pandas, whose import would be about a third of a gateway's start-up."""
    statement = WARM_START.format(url=f"sqlite:///{tmp_path / 'log.db'}", journal=str(tmp_path / "journal"))
    assert "pandas" not in loaded_after(statement)
