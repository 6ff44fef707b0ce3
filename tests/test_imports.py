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
