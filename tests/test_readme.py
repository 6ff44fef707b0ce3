"""Every shell and Python block of README.md runs as written, in order, in a temporary copy of the
repository, and prints what the README says it prints.

The README is parsed at test time, so blocks added later are run too. HTML comments right before a
block steer the test (they do not show on GitHub):

* ``<!-- readme-test: skip: REASON -->``: the block cannot run here; it is reported as skipped, by name;
* ``<!-- readme-test: background: wait for "TEXT" -->``: a long-running command (the simulated fleet)
  that the README says to start first; it runs in the background until it prints TEXT, and is
  stopped by its PID with SIGTERM after the last block, which it must survive cleanly;
* ``<!-- readme-test: expect: REGEX -->`` (repeatable): the block's output has a line matching REGEX.

``make`` targets run their underlying command (see ``MAKE``) instead of recursing into make.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys
import threading
from dataclasses import dataclass, field
from pathlib import Path

import pytest

pytestmark = [pytest.mark.slow, pytest.mark.integration]  # runs the README's commands

ROOT = Path(__file__).resolve().parent.parent
README = ROOT / "README.md"
RUNNABLE = {"sh": "sh", "shell": "sh", "bash": "sh", "console": "sh", "python": "python", "py": "python"}
#: what a README ``make`` line runs instead; the README says the demo takes ``--calls N``
MAKE = {"demo": "zeta-adaptive demo --calls 1000"}  # enough rounds per task type for the replay block
BLOCK_TIMEOUT_S = 120
READY_TIMEOUT_S = 30
FENCE = re.compile(r"^```(\S*)\s*$")
DIRECTIVE = re.compile(r"^<!--\s*readme-test:\s*(skip|background|expect):\s*(.*?)\s*-->\s*$")


@dataclass
class Block:
    """One fenced code block of the README and the directives right before it."""

    index: int
    lang: str
    code: str
    heading: str
    skip: str | None = None
    ready: str | None = None  # background blocks: the output line that says it is up
    expect: list[str] = field(default_factory=list)

    @property
    def name(self) -> str:
        """``block-NN-`` then the section's heading and the first two words of code, e.g. ``block-07-gateway-curl``."""
        tokens = self.code.lower().split()
        command = re.findall(r"[a-z0-9]+", " ".join(tokens[tokens[:1] == ["zeta-adaptive"] :][:2]))
        words = re.findall(r"[a-z0-9]+", self.heading.lower()) + command
        return f"block-{self.index:02d}-" + "-".join(dict.fromkeys(w for w in words if w not in ("a", "an", "the")))


def parse(text: str) -> list[Block]:
    """The runnable blocks of a README, with the directives of the comment lines just above each."""
    blocks: list[Block] = []
    lines = text.splitlines()
    heading, pending = "", []
    i = 0
    while i < len(lines):
        line = lines[i]
        fence = FENCE.match(line)
        if line.startswith("#") and not fence:
            heading, pending = line.lstrip("#").strip(), []
        elif (m := DIRECTIVE.match(line)) is not None:
            pending.append((m.group(1), m.group(2)))
        elif fence:
            end = next(j for j in range(i + 1, len(lines)) if lines[j].startswith("```"))
            lang = RUNNABLE.get(fence.group(1).lower())
            if lang is not None:
                block = Block(len(blocks) + 1, lang, "\n".join(lines[i + 1 : end]) + "\n", heading)
                for kind, value in pending:
                    if kind == "skip":
                        block.skip = value
                    elif kind == "expect":
                        block.expect.append(value)
                    else:
                        wait = re.fullmatch(r'wait for "(.+)"', value)
                        assert wait, f"README: background directive needs 'wait for \"TEXT\"', got {value!r}"
                        block.ready = wait.group(1)
                blocks.append(block)
            pending, i = [], end
        elif line.strip():
            pending = []  # a directive applies only to the block right after it
        i += 1
    return blocks


BLOCKS = parse(README.read_text(encoding="utf-8"))


def _make(code: str) -> str:
    """Shell code with each ``make TARGET`` line replaced by the target's underlying command."""
    out = []
    for line in code.splitlines():
        command, hash_, comment = line.partition("#")
        words = command.split()
        if words[:1] == ["make"]:
            assert len(words) == 2 and words[1] in MAKE, (
                f"README runs `{command.strip()}`: add its command to MAKE in {__file__}"
            )
            line = MAKE[words[1]] + (f"  {hash_}{comment}" if hash_ else "")
        out.append(line)
    return "\n".join(out) + "\n"


class Background:
    """A background command of the README, its output collected by a thread."""

    def __init__(self, block: Block, cwd: Path, env: dict[str, str]) -> None:
        self.block = block
        self.lines: list[str] = []
        self.ready = threading.Event()
        self.proc = subprocess.Popen(
            ["bash", "-c", "exec " + block.code.strip()],
            cwd=cwd,
            env=env,
            text=True,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        self.reader = threading.Thread(target=self._read, daemon=True)
        self.reader.start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.lines.append(line)
            if self.block.ready in line:
                self.ready.set()

    @property
    def output(self) -> str:
        return "".join(self.lines)

    def stop(self) -> int:
        """SIGTERM to the process we started (by its PID), then its exit code."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.reader.join(5)
        return self.proc.returncode


class Workspace:
    """A temporary copy of the repository in which the README's blocks run, in order, once each."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.results: dict[int, subprocess.CompletedProcess[str] | Background | None] = {}
        self.background: list[Background] = []
        bin_dir = str(Path(sys.executable).parent)  # this venv's python and zeta-adaptive
        self.env = {**os.environ, "PATH": bin_dir + os.pathsep + os.environ.get("PATH", ""), "PYTHONUNBUFFERED": "1"}
        self.env.pop("ZETA_LOG_URL", None)

    def run_through(self, index: int) -> None:
        """Run every block up to ``index`` that has not run yet, in README order."""
        for block in BLOCKS[:index]:
            if block.index not in self.results:
                self.results[block.index] = None if block.skip else self._run(block)

    def _run(self, block: Block) -> subprocess.CompletedProcess[str] | Background:
        if block.ready is not None:
            bg = Background(block, self.root, self.env)
            self.background.append(bg)
            bg.ready.wait(READY_TIMEOUT_S)
            return bg
        if block.lang == "python":  # as pasted into `python` at the repository root
            args, code = ["python", "-"], block.code
        else:
            args, code = ["bash", "-e", "-o", "pipefail", "-s"], _make(block.code)
        return subprocess.run(
            args, input=code, cwd=self.root, env=self.env, text=True, capture_output=True, timeout=BLOCK_TIMEOUT_S
        )

    def stop(self) -> None:
        for bg in self.background:
            bg.stop()


def _tracked_files() -> list[str]:
    """The repository's tracked files (what a fresh clone has)."""
    out = subprocess.run(["git", "ls-files", "-z"], cwd=ROOT, capture_output=True, text=True, check=True).stdout
    return [p for p in out.split("\0") if p]


@pytest.fixture(scope="module")
def workspace(tmp_path_factory):
    root = tmp_path_factory.mktemp("readme") / "repo"
    for rel in _tracked_files():
        src = ROOT / rel
        if src.is_file():
            (root / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, root / rel)
    ws = Workspace(root)
    yield ws
    ws.stop()


@pytest.mark.slow
@pytest.mark.parametrize("block", BLOCKS, ids=[b.name for b in BLOCKS])
def test_block(block: Block, workspace: Workspace) -> None:
    if block.skip:
        pytest.skip(f"{block.name}: marked in README.md: {block.skip}")
    workspace.run_through(block.index)
    failed = [b.name for b in BLOCKS[: block.index - 1] if _failed(workspace.results.get(b.index))]
    result = workspace.results[block.index]
    if isinstance(result, Background):
        assert result.proc.poll() is None, f"{block.name} exited with {result.proc.returncode}:\n{result.output}"
        assert result.ready.is_set(), (
            f"{block.name} did not print {block.ready!r} within {READY_TIMEOUT_S} s:\n{result.output}"
        )
        output = result.output
    else:
        assert result is not None
        output = result.stdout + result.stderr
        assert result.returncode == 0, f"{block.name} failed (after earlier failures {failed}):\n{block.code}\n{output}"
    for pattern in block.expect:
        assert re.search(pattern, output, re.MULTILINE), f"{block.name}: no output line matches {pattern!r}:\n{output}"


def _failed(result: subprocess.CompletedProcess[str] | Background | None) -> bool:
    return isinstance(result, subprocess.CompletedProcess) and result.returncode != 0


@pytest.mark.slow
def test_background_commands_stop_cleanly(workspace: Workspace) -> None:
    """After the last block, what the README started in the background stops on SIGTERM, exit code 0."""
    workspace.run_through(len(BLOCKS))
    if not workspace.background:
        pytest.skip("README.md starts nothing in the background")
    for bg in workspace.background:
        code = bg.stop()
        assert code == 0, f"{bg.block.name} exited with {code} on SIGTERM:\n{bg.output}"
        assert "stopped" in bg.output.splitlines()[-1], bg.output


def test_parser_reads_directives() -> None:
    """The directives steer the blocks right after them and no others."""
    text = (
        "# Title\n\n<!-- readme-test: skip: needs PostgreSQL -->\n```sh\npsql\n```\n\n"
        "Text.\n\n<!-- readme-test: expect: ^ok$ -->\n<!-- readme-test: expect: done -->\n```python\nprint('ok')\n```\n\n"
        "<!-- readme-test: skip: stale -->\nA paragraph in between.\n\n```toml\nx = 1\n```\n\n"
        '## Gateway\n\n<!-- readme-test: background: wait for "ready" -->\n```bash\nserve\n```\n'
    )
    blocks = parse(text)
    assert [(b.lang, b.skip, b.expect, b.ready) for b in blocks] == [
        ("sh", "needs PostgreSQL", [], None),
        ("python", None, ["^ok$", "done"], None),
        ("sh", None, [], "ready"),
    ]
    assert blocks[2].name == "block-03-gateway-serve"
    assert _make("make demo   # the demo\n") == "zeta-adaptive demo --calls 1000  # the demo\n"


@pytest.mark.slow
def test_make_clean_removes_what_the_readme_wrote(workspace: Workspace) -> None:
    """Everything the README's commands (and a second demo run, which keeps zeta.db.prev) wrote is
    ignored by git, and `make clean` removes it (byte-compiled files aside)."""
    if shutil.which("make") is None:
        pytest.skip("make is not installed")
    workspace.run_through(len(BLOCKS))
    workspace.stop()
    subprocess.run(
        ["zeta-adaptive", "demo", "--calls", "20"],
        cwd=workspace.root,
        env=workspace.env,
        capture_output=True,
        check=True,
        timeout=BLOCK_TIMEOUT_S,
    )
    tracked = set(_tracked_files())

    def written() -> set[str]:
        files = {p.relative_to(workspace.root).as_posix() for p in workspace.root.rglob("*") if p.is_file()}
        return {p for p in files - tracked if "__pycache__" not in p and not p.startswith(".git/")}

    before = written()
    assert {"zeta.db", "zeta.db.prev", "example.db"} <= before
    subprocess.run(["git", "init", "-q"], cwd=workspace.root, check=True)
    unignored = subprocess.run(
        ["git", "status", "--porcelain", "--untracked-files=all"],
        cwd=workspace.root,
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    assert not [line for line in unignored.splitlines() if line[3:] in before], f"not in .gitignore:\n{unignored}"
    subprocess.run(
        ["make", "clean"], cwd=workspace.root, env=workspace.env, capture_output=True, check=True, timeout=60
    )
    assert written() == set(), f"left by make clean: {sorted(written())} (written: {sorted(before)})"
