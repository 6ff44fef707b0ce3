"""The writer's batch sanitizer: a batch comes out as each of its rows would alone, and no secret survives it."""

from __future__ import annotations

import math

import numpy as np
import pytest

from zeta_adaptive._scrub import REDACTED, Scrubber
from zeta_adaptive._store import ERROR_CHARS, INT_MAX, TABLES, sanitize, sanitize_rows

KEY = "sk-test-4f9a2b7c1d0e"


def attempt(i: int, **changes: object) -> dict[str, object]:
    row: dict[str, object] = {c.name: None for c in TABLES["attempts"].columns}
    row.update(
        call_id=f"c{i}", idx=0, ts=1000.0 + i, task_type="t", model="m", outcome="ok", status=200,
        latency_s=0.5, tokens_in=3, tokens_out=4, cost=0.001, router_id="r",
    )  # fmt: skip
    row.update(changes)
    return row


HOSTILE = [
    {"error": f"upstream said: invalid key {KEY}"},
    {"error": "echo: Authorization: Bearer sk-other-999"},
    {"error": '{"api_key": "zzz-secret"}'},
    {"error": "naïve ünïcode is kept"},
    {"error": "lone \ud800 surrogate"},
    {"error": "nul\x00byte"},
    {"error": "x" * (ERROR_CHARS + 50)},
    {"model": "m\x00odel"},
    {"latency_s": math.nan, "ttft_s": math.inf},
    {"tokens_in": 2**40, "tokens_out": -(2**40)},
    {"tokens_in": np.int64(7), "cost": np.float32(0.25), "status": True},
    {"ts": 5},
]


@pytest.mark.parametrize("hostile", HOSTILE, ids=lambda h: next(iter(h)))
def test_a_batch_is_cleaned_as_each_row_alone_whatever_one_row_holds(hostile):
    scrub = Scrubber([KEY])
    rows = [("attempts", attempt(i)) for i in range(50)]
    rows.insert(17, ("attempts", attempt(99, **hostile)))
    rows.append(("calls", {"call_id": "c1", "ts": 1.0, "ranking": "[]", "answer": f"Bearer {KEY}"}))
    batch = sanitize_rows(rows, scrub)
    alone = {(t, r["call_id"]): sanitize(t, r, scrub) for t, r in rows}
    assert len(batch) == len(rows)
    for table, row in batch:
        assert dict(row) == dict(alone[(table, row["call_id"])])
        assert set(row) == {c.name for c in TABLES[table].columns}
        text = repr(row)
        assert KEY not in text and "sk-other-999" not in text and "zzz-secret" not in text


def test_each_kind_of_value_is_cleaned():
    scrub = Scrubber([KEY])
    row = sanitize("attempts", attempt(1, **HOSTILE[0]), scrub)
    assert row["error"] == f"upstream said: invalid key {REDACTED}"
    assert sanitize("attempts", attempt(1, **HOSTILE[1]), scrub)["error"] == f"echo: Authorization: {REDACTED}"
    assert sanitize("attempts", attempt(1, **HOSTILE[3]), scrub)["error"] == "naïve ünïcode is kept"
    assert sanitize("attempts", attempt(1, **HOSTILE[4]), scrub)["error"] == "lone ? surrogate"
    assert sanitize("attempts", attempt(1, **HOSTILE[5]), scrub)["error"] == "nulbyte"
    cut = sanitize("attempts", attempt(1, **HOSTILE[6]), scrub)["error"]
    assert len(cut) == ERROR_CHARS and cut.endswith("…[+50 chars]")
    assert sanitize("attempts", attempt(1, **HOSTILE[7]), scrub)["model"] == "model"
    floats = sanitize("attempts", attempt(1, **HOSTILE[8]), scrub)
    assert floats["latency_s"] == 0.0 and floats["ttft_s"] is None  # NOT NULL column: 0; nullable: NULL
    ints = sanitize("attempts", attempt(1, **HOSTILE[9]), scrub)
    assert (ints["tokens_in"], ints["tokens_out"]) == (INT_MAX, -INT_MAX - 1)
    plain = sanitize("attempts", attempt(1, **HOSTILE[10]), scrub)
    assert [type(plain[k]) for k in ("tokens_in", "cost", "status")] == [int, float, int]
    assert plain["status"] == 1 and plain["cost"] == 0.25
    assert type(sanitize("attempts", attempt(1, ts=5), scrub)["ts"]) is float


def test_plain_rows_come_back_as_they_are_and_others_as_new_dicts():
    rows = [("attempts", attempt(i)) for i in range(5)]
    assert all(out is row for (_, out), (_, row) in zip(sanitize_rows(rows, Scrubber([KEY])), rows))
    extra = [("attempts", {**attempt(1), "not_a_column": 1})]
    (_, out), = sanitize_rows(extra)  # fmt: skip
    assert "not_a_column" not in out and extra[0][1]["not_a_column"] == 1


@pytest.mark.parametrize(
    "texts",
    [
        ["fine", "x-api-key:", "abc"],
        ["authorization", ": secret"],
        ["a" * 10, f"...{KEY[:5]}", f"{KEY[5:]}..."],
    ],
)
def test_finds_on_joined_texts_never_misses_a_secret_of_one_part(texts):
    scrub = Scrubber([KEY])
    some_part = any(scrub.finds(t) for t in texts)
    assert scrub.finds("\n".join(texts)) or not some_part
    assert all(scrub(t) == t for t in texts if not scrub.finds(t))


def test_a_header_word_in_any_case_or_in_unicode_text_is_scanned():
    scrub = Scrubber()
    assert scrub("AUTHORIZATION: Basic abc") == f"AUTHORIZATION: {REDACTED}"
    assert scrub("é bEaReR tok123") == f"é bEaReR {REDACTED}"
    assert not scrub.finds("nothing to see here") and scrub.finds("Api-Key: 1")
