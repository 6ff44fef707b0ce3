"""Run every notebook end to end with nbclient on a small log, as `make test` does, so a broken
notebook fails CI; check each section drew a figure and that the notebooks are committed clean."""

from __future__ import annotations

import base64
from pathlib import Path

import nbformat
import pytest
from ipykernel.kernelspec import write_kernel_spec
from jupyter_client import KernelManager
from jupyter_client.kernelspec import KernelSpecManager
from nbclient import NotebookClient

pytestmark = pytest.mark.slow  # executes the notebooks

NOTEBOOKS = Path(__file__).resolve().parents[1] / "notebooks"
PNG = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def kernels(tmp_path_factory) -> Path:
    """A folder with one kernelspec, ``python3``, that runs this interpreter (the venv's), whatever
    kernels the machine has installed elsewhere."""
    folder = tmp_path_factory.mktemp("kernels")
    write_kernel_spec(folder / "python3")
    return folder


def _execute(name: str, kernels: Path, cwd: Path) -> nbformat.NotebookNode:
    """Execute a notebook from ``cwd`` and return it with its outputs (a failing cell raises)."""
    nb = nbformat.read(NOTEBOOKS / name, as_version=4)
    km = KernelManager(kernel_name="python3", kernel_spec_manager=KernelSpecManager(kernel_dirs=[str(kernels)]))
    NotebookClient(nb, km=km, timeout=120, resources={"metadata": {"path": str(cwd)}}).execute()
    return nb


def _sections(nb: nbformat.NotebookNode) -> dict[str, list[nbformat.NotebookNode]]:
    """The cells under each level-2 heading."""
    sections: dict[str, list[nbformat.NotebookNode]] = {}
    current = None
    for cell in nb.cells:
        if cell.cell_type == "markdown" and cell.source.startswith("## "):
            current = cell.source.splitlines()[0][3:]
            sections[current] = []
        elif current is not None:
            sections[current].append(cell)
    return sections


def _pngs(cells: list[nbformat.NotebookNode]) -> list[bytes]:
    """Every PNG the cells displayed."""
    return [
        base64.b64decode(out["data"]["image/png"])
        for cell in cells
        if cell.cell_type == "code"
        for out in cell.outputs
        if "image/png" in out.get("data", {})
    ]


def _stdout(nb: nbformat.NotebookNode) -> str:
    """What the notebook printed."""
    return "".join(
        out.get("text", "")
        for cell in nb.cells
        if cell.cell_type == "code"
        for out in cell.outputs
        if out.get("name") == "stdout"
    )


def _check_figures(nb: nbformat.NotebookNode, sections: list[str]) -> None:
    """Each expected section drew at least one real PNG, and every figure is followed by its reading."""
    found = _sections(nb)
    assert list(found) == sections
    for title, cells in found.items():
        images = _pngs(cells)
        assert images and all(png.startswith(PNG) and len(png) > 5000 for png in images), title
        for i, cell in enumerate(cells):
            if _pngs([cell]):
                assert cells[i + 1].cell_type == "markdown" and cells[i + 1].source.startswith("**Reading.**"), title


def test_analysis_notebook_builds_its_own_log_and_draws_every_section(kernels, tmp_path, monkeypatch):
    monkeypatch.delenv("ZETA_LOG_URL", raising=False)
    monkeypatch.setenv("ZETA_DEMO_CALLS", "300")
    monkeypatch.setenv("TMPDIR", str(tmp_path))  # the notebook's temporary log goes where pytest cleans up
    cwd = tmp_path / "notebooks"  # no ../zeta.db from here: the notebook runs a demo of its own
    cwd.mkdir()
    nb = _execute("analysis.ipynb", kernels, cwd)
    assert "300 calls" in _stdout(nb) and "zeta-analysis-" in _stdout(nb)
    _check_figures(
        nb,
        [
            "Traffic share over time per task type",
            "Latency distributions per model",
            "Failure and fallback rates over time",
            "Preference order over time",
            "Cumulative regret",
        ],
    )


def test_replay_notebook_logs_random_traffic_and_compares_policies(kernels, tmp_path, monkeypatch):
    monkeypatch.delenv("ZETA_LOG_URL", raising=False)
    monkeypatch.setenv("ZETA_REPLAY_CALLS", "300")
    monkeypatch.setenv("ZETA_REPLAY_BOOT", "100")
    monkeypatch.setenv("ZETA_REPLAY_LEARNING_BOOT", "5")
    monkeypatch.setenv("TMPDIR", str(tmp_path))
    nb = _execute("replay.ipynb", kernels, tmp_path)
    assert "300 logged calls" in _stdout(nb)
    _check_figures(nb, ["Policies compared offline", "Estimates against the truth"])


def test_notebooks_are_committed_without_outputs():
    paths = sorted(NOTEBOOKS.glob("*.ipynb"))
    assert [p.name for p in paths] == ["analysis.ipynb", "replay.ipynb"]
    for path in paths:
        nb = nbformat.read(path, as_version=4)
        nbformat.validate(nb)
        for cell in nb.cells:
            if cell.cell_type == "code":
                assert cell.outputs == [] and cell.execution_count is None, path.name
