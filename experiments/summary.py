"""Collect every benchmark's headline rows into one table: ``experiments/results/SUMMARY.md``.

Each ``experiments/results/*.md`` (except SUMMARY.md) contributes the rows of its first table
when that table has a ``workload`` and an ``ours`` column; ``peer``, ``ratio``, ``target`` and a
met/missed verdict are taken from the columns whose names start with those words (a header's
bracketed note, such as ``ratio (peer / ours, median)``, is kept with the value). When there is no
verdict column, it is read from the target cell (``met ...`` / ``MISSED ...``). A first table of
another shape contributes only its rows with a met/MISSED verdict in a ``target...`` column
(workload = its first two cells). Each ``*.csv`` with
``workload`` and ``ours`` columns contributes the rows no markdown file already gave; every other
file is listed as detail. ``run_all.json`` (written by ``run_all.py``), when present, adds how each
script ran and for how long.

    .venv/bin/python -m experiments.summary [--out DIR]      # DIR defaults to experiments/results
"""

from __future__ import annotations

import argparse
import csv
import json
import re
from pathlib import Path

from .common import RESULTS, machine_line, markdown_table, now

COLUMNS = ["workload", "ours", "peer", "ratio", "target", "met?"]
_FIELDS = ("workload", "ours", "peer", "ratio", "target")


def first_table(text: str) -> tuple[list[str], list[list[str]]] | None:
    """Header and rows of the first GitHub markdown table in ``text``."""
    lines = text.splitlines()
    for i, line in enumerate(lines):
        if line.startswith("|") and i + 1 < len(lines) and re.match(r"^\|(\s*:?-+:?\s*\|)+\s*$", lines[i + 1]):
            header = _cells(line)
            rows = []
            for body in lines[i + 2 :]:
                if not body.startswith("|"):
                    break
                rows.append(_cells(body))
            return header, rows
    return None


def _cells(line: str) -> list[str]:
    return [c.strip() for c in line.strip().strip("|").split("|")]


def _note(header: str) -> str:
    """The bracketed part of a header: ``ratio (peer / ours)`` -> ``peer / ours``."""
    m = re.search(r"\((.*)\)", header)
    return m.group(1).strip() if m else ""


def _verdict(text: str) -> tuple[str, str]:
    """(verdict, rest) from a cell such as ``met (>= 5x)``, ``MISSED``, ``(reference)``."""
    t = text.strip()
    for word, verdict in (("met", "met"), ("missed", "MISSED"), ("not met", "MISSED")):
        if t.lower() == word or t.lower().startswith(word + " ") or t.lower().startswith(word + "("):
            rest = t[len(word) :].strip().strip("()").strip()
            return verdict, rest
    if t.lower() in ("yes", "true"):
        return "met", ""
    if t.lower() in ("no", "false"):
        return "MISSED", ""
    return "", t


def rows_from(header: list[str], body: list[list[str]], source: str) -> list[dict[str, str]] | None:
    """Summary rows from a table, or None when it is not a headline table (no workload / ours)."""
    low = [h.lower() for h in header]
    where: dict[str, int] = {}
    for field in (*_FIELDS, "met"):
        for j, h in enumerate(low):
            if h.startswith(field) and field not in where:
                where[field] = j
    if "workload" not in where or "ours" not in where:
        return _verdict_rows(header, body, source)
    out = []
    for cells in body:
        cells = cells + [""] * (len(header) - len(cells))
        get = {f: cells[j] for f, j in where.items()}
        ratio = get.get("ratio", "")
        ratio_note = _note(header[where["ratio"]]) if "ratio" in where else ""
        if ratio and ratio_note and not re.search(r"[a-z]", ratio):
            ratio = f"{ratio} ({ratio_note})"
        target = get.get("target", "")
        verdict = get.get("met", "")
        if verdict:
            verdict = _verdict(verdict)[0] or verdict
        else:
            verdict, target_rest = _verdict(target)
            target = target_rest
        if not target and "target" in where:
            target = _note(header[where["target"]])
        if not verdict:
            verdict = (
                "–" if "target" not in where or target.lower() in ("", "–", "-", "(reference)", "reference") else target
            )
            if verdict == target:
                verdict = "–"
        out.append(
            {
                "workload": f"[{source}]({source}.md): {get['workload']}" if source else get["workload"],
                "ours": get.get("ours", ""),
                "peer": get.get("peer", ""),
                "ratio": ratio or "–",
                "target": target or "–",
                "met?": verdict,
            }
        )
    return out


def _verdict_rows(header: list[str], body: list[list[str]], source: str) -> list[dict[str, str]] | None:
    """A table of another shape: its rows that carry a verdict (met / MISSED) in a ``target`` or
    ``met`` column. Workload = the first two cells; ours = the third column, named."""
    low = [h.lower() for h in header]
    col = next((j for j, h in enumerate(low) if h.startswith(("target", "met"))), None)
    if col is None or len(header) < 3:
        return None
    out = []
    for cells in body:
        cells = cells + [""] * (len(header) - len(cells))
        verdict, rest = _verdict(cells[col])
        if verdict not in ("met", "MISSED"):
            continue
        value_col = next(j for j in range(len(header)) if j not in (0, 1, col))
        out.append(
            {
                "workload": (f"[{source}]({source}.md): " if source else "") + ", ".join(c for c in cells[:2] if c),
                "ours": f"{header[value_col]}: {cells[value_col]}",
                "peer": "–",
                "ratio": "–",
                "target": rest or _note(header[col]) or header[col],
                "met?": verdict,
            }
        )
    return out or None


def collect(folder: Path) -> tuple[list[dict[str, str]], list[str], list[str]]:
    """(summary rows, files summarised, detail files) from a results folder."""
    rows: list[dict[str, str]] = []
    used, detail = [], []
    seen: set[tuple[str, str]] = set()
    quick = False
    for md in sorted(folder.glob("*.md")):
        if md.name == "SUMMARY.md":
            continue
        text = md.read_text(encoding="utf-8")
        quick = quick or "Quick smoke run" in text
        table = first_table(text)
        got = rows_from(*table, md.stem) if table else None
        if not got:
            detail.append(md.name)
            continue
        used.append(md.name)
        for r in got:
            seen.add((md.stem.split("_summary")[0], _plain_workload(r["workload"])))
        rows += got
    for path in sorted(folder.glob("*.csv")):
        with open(path, newline="", encoding="utf-8") as fh:
            reader = csv.reader(fh)
            header = next(reader, None)
            body = [list(r) for r in reader]
        got = rows_from(header, body, "") if header else None
        if not got:
            detail.append(path.name)
            continue
        stem = path.stem.removesuffix("_summary")
        fresh = [r for r in got if (stem, r["workload"]) not in seen]
        if not fresh:
            detail.append(path.name + " (same rows as its .md)")
            continue
        used.append(path.name)
        for r in fresh:
            r["workload"] = f"[{stem}]({path.name}): {r['workload']}"
        rows += fresh
    if quick:
        detail.append("(some files come from --quick smoke runs: not measurements)")
    return rows, used, detail


def _plain_workload(cell: str) -> str:
    return re.sub(r"^\[[^\]]*\]\([^)]*\):\s*", "", cell)


def write_summary(folder: Path, command: str = "make bench") -> Path:
    rows, used, detail = collect(folder)
    met = sum(r["met?"] == "met" for r in rows)
    missed = sum(r["met?"] == "MISSED" for r in rows)
    parts = [
        "# Benchmark summary",
        "",
        f"{len(rows)} rows from {len(used)} files: **{met} targets met, {missed} missed**, {len(rows) - met - missed} for reference.",
        "",
        markdown_table(COLUMNS, rows) if rows else "(no benchmark results found)",
        "",
    ]
    runs = folder / "run_all.json"
    if runs.exists():
        info = json.loads(runs.read_text(encoding="utf-8"))
        table = [
            {"script": r["script"], "status": r["status"], "seconds": r.get("seconds")} for r in info.get("runs", [])
        ]
        parts += ["## How each script ran", "", markdown_table(["script", "status", "seconds"], table), ""]
        if info.get("total_seconds") is not None:
            parts += [f"Total: {info['total_seconds']:.0f} s{' (--quick)' if info.get('quick') else ''}.", ""]
    parts += [
        f"- sources: {', '.join(used) or 'none'}",
        f"- detail files: {', '.join(detail) or 'none'}",
        f"- summarised: {now()} on {machine_line()} (each source file states the date, machine and load of its own run)",
        f"- command: `{command}`",
        "",
    ]
    out = folder / "SUMMARY.md"
    out.write_text("\n".join(parts), encoding="utf-8")
    return out


def main(argv: list[str] | None = None) -> Path:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=RESULTS, help=f"results folder (default {RESULTS})")
    parser.add_argument("--command", default="make bench", help="the command named in the summary")
    args = parser.parse_args(argv)
    path = write_summary(args.out, args.command)
    print(path.read_text(encoding="utf-8"))
    return path


if __name__ == "__main__":
    main()
