"""Shared fixtures: a SQLite store URL per test, a clean PostgreSQL database when one is given, a
private PostgreSQL server, and the rule that CI (ZETA_REQUIRE_POSTGRES=1) fails when the PostgreSQL tests did not all run."""

from __future__ import annotations

import ast
import itertools
import os
import tempfile
from collections import defaultdict
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import create_engine, make_url, text

from experiments.common import PrivatePostgres, postgres_bindir

# journals of stores opened without a journal_dir go to a throwaway folder, not the user's home
os.environ["XDG_STATE_HOME"] = tempfile.mkdtemp(prefix="zeta-test-state-")

PG_URL = os.environ.get("ZETA_TEST_POSTGRES_URL")


def _worker_database(url: str, worker: str) -> str:
    """Under pytest-xdist, each worker's own database beside the given one (created when missing), so
    that one worker's fixture dropping the tables never pulls them from under the other's test."""
    base = make_url(url)
    name = f"{base.database}_{worker}"
    engine = create_engine(base, isolation_level="AUTOCOMMIT")
    with engine.connect() as conn:
        if conn.execute(text("SELECT 1 FROM pg_database WHERE datname = :n"), {"n": name}).first() is None:
            conn.execute(text(f'CREATE DATABASE "{name}"'))
    engine.dispose()
    return base.set(database=name).render_as_string(hide_password=False)


if PG_URL and os.environ.get("PYTEST_XDIST_WORKER"):
    PG_URL = os.environ["ZETA_TEST_POSTGRES_URL"] = _worker_database(PG_URL, os.environ["PYTEST_XDIST_WORKER"])
REQUIRE_PG = os.environ.get("ZETA_REQUIRE_POSTGRES") == "1"

_pg = {"collected": 0, "passed": 0}


@pytest.fixture(autouse=True)
def _own_journal_dir(tmp_path, monkeypatch):
    """Each test's stores journal in its own folder: rows one test left in a journal are never
    replayed into the next test's (freshly emptied) database."""
    monkeypatch.setenv("XDG_STATE_HOME", str(tmp_path / "state"))


@pytest.fixture
def sqlite_url(tmp_path) -> str:
    return f"sqlite:///{tmp_path / 'zeta.db'}"


@pytest.fixture
def pg_url() -> str:
    """The CI PostgreSQL database, emptied of zeta_adaptive's tables."""
    if not PG_URL:
        pytest.skip("ZETA_TEST_POSTGRES_URL is not set")
    engine = create_engine(PG_URL)
    with engine.begin() as conn:
        conn.execute(
            text(
                "DROP TABLE IF EXISTS feedback, attempts, calls, dead_letters, call_features, attempt_rollups, feedback_rollups, alembic_version CASCADE"
            )
        )
    engine.dispose()
    return PG_URL


@pytest.fixture
def private_pg() -> Iterator[PrivatePostgres]:
    """A PostgreSQL server of the test's own, running, that the test may stop, start and freeze."""
    if postgres_bindir() is None:
        pytest.skip("no PostgreSQL binaries on this machine")
    pg = PrivatePostgres()
    try:
        pg.start()
        yield pg
    finally:
        pg.destroy()


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def store_url(request, tmp_path) -> str:
    """Each test that takes it runs on SQLite and on PostgreSQL."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'zeta.db'}"
    return request.getfixturevalue("pg_url")


def _module_marks(path: Path) -> set[str]:
    """The marks a test file puts on all its tests (``pytestmark = pytest.mark.X`` or a list), read
    from its source without importing it."""
    for node in ast.parse(path.read_text(encoding="utf-8")).body:
        if isinstance(node, ast.Assign) and any(getattr(t, "id", None) == "pytestmark" for t in node.targets):
            return {n.attr for n in ast.walk(node.value) if isinstance(n, ast.Attribute) and n.attr != "mark"}
    return set()


def pytest_ignore_collect(collection_path: Path, config: pytest.Config) -> bool | None:
    """A file whose module marks make ``-m`` false whatever marks its tests add (parameters, fixtures)
    is not even imported: `make test-fast` then skips importing the gateway, notebook and experiment
    stacks along with their tests."""
    expr = config.getoption("markexpr")
    if not expr or not collection_path.name.startswith("test_") or collection_path.suffix != ".py":
        return None
    marks = _module_marks(collection_path)
    try:
        names = {n.id for n in ast.walk(ast.parse(expr, mode="eval")) if isinstance(n, ast.Name)} - marks
        if not marks or len(names) > 8:
            return None
        for added in itertools.product((False, True), repeat=len(names)):  # every mark a test may add
            present = marks | {name for name, on in zip(sorted(names), added) if on}
            if eval(expr, {"__builtins__": {}}, defaultdict(bool, dict.fromkeys(present, True))):
                return None
    except Exception:  # an expression beyond plain names, and/or/not: let pytest decide per test
        return None
    return True


def pytest_collection_modifyitems(config, items):
    for item in items:
        if "pg_url" in getattr(item, "fixturenames", ()) and "postgres" not in item.keywords:
            item.add_marker(pytest.mark.postgres)
    _pg["collected"] = sum(1 for item in items if "postgres" in item.keywords)


def pytest_runtest_logreport(report):
    if report.when == "call" and report.passed and "postgres" in report.keywords:
        _pg["passed"] += 1


def pytest_sessionfinish(session, exitstatus):
    if (REQUIRE_PG and _pg["passed"] < _pg["collected"]) or (REQUIRE_PG and _pg["collected"] == 0):
        session.exitstatus = 1


def pytest_terminal_summary(terminalreporter):
    if REQUIRE_PG:
        terminalreporter.write_line(f"PostgreSQL tests: {_pg['passed']} of {_pg['collected']} passed (required: all)")
