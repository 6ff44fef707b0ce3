"""The log-fault experiment (experiments/log_faults.py) runs end to end in its quick mode (SQLite only)
and writes every output; poison rows lose nothing and leak no key, and a SIGKILLed worker in journal
mode loses no answered call. No timing is asserted: a quick run is a smoke test, not a measurement."""

from __future__ import annotations

import csv

import pytest
from helpers import run_experiment

pytestmark = pytest.mark.slow  # runs experiments


def _value(rows: list[dict[str, str]], part: str, metric: str, scenario: str = "") -> str:
    """The value of one metric of one part (and scenario, by its first word) on SQLite."""
    (hit,) = [
        r["value"]
        for r in rows
        if (r["part"], r["store"], r["metric"]) == (part, "sqlite", metric) and r["scenario"].startswith(scenario)
    ]
    return hit


@pytest.mark.timeout(300)  # generous: on a shared, loaded machine one import of the library can take seconds
def test_log_faults_quick_writes_its_outputs_and_loses_nothing(tmp_path):
    run_experiment("log_faults", tmp_path, timeout=280)
    for name in ("log_faults.csv", "log_faults.md", "log_faults.png"):
        assert (tmp_path / name).stat().st_size > 0, name
    with open(tmp_path / "log_faults.csv", newline="", encoding="utf-8") as fh:
        rows = list(csv.DictReader(fh))
    poison = {r["metric"]: r["value"] for r in rows if r["part"] == "poison rows" and r["store"] == "sqlite"}
    assert int(poison["calls made"]) == int(poison["calls rows"]) > 0
    assert (
        int(poison["attempts made"]) == int(poison["attempts rows"]) > int(poison["calls made"])
    )  # fallbacks happened
    assert poison["rows lost"] == poison["rows duplicated"] == poison["key occurrences"] == "0"
    assert int(poison["dead letters"]) == int(poison["refused rows queued"]) > 0
    assert poison["refused rows not in dead letters"] == "0" and poison["writer crashes"] == "0"
    assert int(_value(rows, "SIGKILLed worker", "calls answered", "journal")) > 0
    assert _value(rows, "SIGKILLed worker", "calls lost", "journal") == "0"  # nothing acknowledged is lost
    assert all(r["value"] == "0" for r in rows if r["metric"] == "rows duplicated")
    contenders = {r["scenario"] for r in rows if r["part"] == "cost of durability"}
    assert contenders == {"no log writes", "batched", "journal"}
    md = (tmp_path / "log_faults.md").read_text(encoding="utf-8")
    assert "Quick smoke run" in md and "The cost of durability" in md and "no log writes" in md and "command:" in md
