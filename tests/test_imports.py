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
