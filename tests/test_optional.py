"""A missing optional dependency raises MissingDependency (a ZetaError and an ImportError) naming
the extra that brings it; the command line prints it on one line. Each test hides the module by
putting None in sys.modules, which makes importing it fail as if it were not installed."""

from __future__ import annotations

import sys

import pandas as pd
import pytest
from click.testing import CliRunner

from zeta_adaptive import Store
from zeta_adaptive import analysis as za
from zeta_adaptive._exceptions import MissingDependency, ZetaError
from zeta_adaptive.cli import main


def _hide(monkeypatch: pytest.MonkeyPatch, *modules: str) -> None:
    for name in modules:
        monkeypatch.setitem(sys.modules, name, None)


def test_a_plot_without_matplotlib_names_the_plots_extra(monkeypatch):
    _hide(monkeypatch, "matplotlib", "matplotlib.figure", "matplotlib.lines")
    with pytest.raises(MissingDependency, match=r"pip install 'zeta_adaptive\[plots\]'") as caught:
        za.plot_regret(pd.DataFrame({"task_type": [], "call_index": [], "cumulative_regret": []}))
    assert (caught.value.module, caught.value.extra) == ("matplotlib", "plots")
    assert isinstance(caught.value, ZetaError) and isinstance(caught.value, ImportError)


def test_a_postgresql_store_without_psycopg_names_the_postgres_extra(monkeypatch, tmp_path):
    _hide(monkeypatch, "psycopg")
    with pytest.raises(MissingDependency, match=r"psycopg is not installed.*zeta_adaptive\[postgres\]") as caught:
        Store("postgresql+psycopg://zeta:s3cret-pw@127.0.0.1:1/zeta", journal_dir=tmp_path)
    assert "s3cret-pw" not in str(caught.value)


def test_the_gateway_without_starlette_names_the_gateway_extra_in_one_line(monkeypatch, tmp_path):
    _hide(monkeypatch, "starlette", "starlette.applications")
    monkeypatch.delitem(sys.modules, "zeta_adaptive.gateway", raising=False)  # imported afresh, without starlette
    config = tmp_path / "gateway.toml"
    config.write_text('[models.m]\nbase_url = "http://127.0.0.1:1/v1"\n[routes.simple]\nmodels = ["m"]\n')
    result = CliRunner().invoke(main, ["serve", "--config", str(config)])
    assert result.exit_code != 0
    assert result.output.strip().splitlines() == [
        "Error: starlette is not installed; it comes with the 'gateway' extra: pip install 'zeta_adaptive[gateway]'"
    ]
