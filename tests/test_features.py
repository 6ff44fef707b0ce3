"""Prompt features: deterministic across processes, bounded, scaled, with the caller's own values."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys

import numpy as np
import pytest

from zeta_adaptive import Features, Featurizer, InvalidRequest
from zeta_adaptive._features import DENSE_NAMES, message_text

PROMPT = (
    "Write a Python function `def add(a, b):` that returns a + b.\nThen explain why 2^3 = 8, step by step. Ünïcode too."
)


def dense(f: Featurizer, x: Features) -> dict[str, float]:
    return dict(zip(DENSE_NAMES, x.dense(f.size)[f.hashed :], strict=True))


@pytest.mark.slow
def test_features_are_the_same_in_another_process_with_another_hash_seed():
    f = Featurizer(bits=10)
    here = f([{"role": "user", "content": PROMPT}]).to_json()
    code = (
        "import sys; from zeta_adaptive import Featurizer; "
        "print(Featurizer(bits=10)([{'role': 'user', 'content': sys.argv[1]}]).to_json())"
    )
    env = {**os.environ, "PYTHONHASHSEED": "12345"}
    there = subprocess.run(
        [sys.executable, "-c", code, PROMPT], capture_output=True, text=True, env=env, check=True
    ).stdout.strip()
    assert json.loads(there) == json.loads(here)


def test_features_are_bounded_sorted_and_scaled():
    f = Featurizer(bits=8, max_chars=256)
    x = f.from_text(PROMPT * 50)
    assert np.all(np.diff(x.indices) > 0)
    assert x.indices.min() >= 0 and x.indices.max() < f.size
    assert np.all(np.isfinite(x.values))
    hashed = x.indices < f.hashed
    assert np.dot(x.values[hashed], x.values[hashed]) == pytest.approx(1.0)
    assert x.nnz <= 2 * 256 + len(DENSE_NAMES)  # at most a uni- and a bi-gram per scanned character
    assert all(0.0 <= v <= 1.5 for v in dense(f, x).values())


def test_only_the_last_max_chars_are_scanned():
    f = Featurizer(bits=8, max_chars=64)
    tail = " the last sixty-four characters decide everything here, ok".rjust(64)
    a = f.from_text("completely different words at the start " * 20 + tail)
    b = f.from_text("z" * 5000 + tail)
    assert len(a.indices) > len(DENSE_NAMES)
    np.testing.assert_array_equal(a.indices, b.indices)
    np.testing.assert_allclose(a.values, b.values)


def test_words_are_case_and_position_free_and_bigrams_count():
    f = Featurizer(bits=12)
    one, other = f.from_text("Hello, World!"), f.from_text("hello world")
    np.testing.assert_array_equal(one.indices[one.indices < f.hashed], other.indices[other.indices < f.hashed])
    swapped = f.from_text("world hello")
    assert set(swapped.indices) != set(other.indices)  # same words, other bigram


def test_an_ngram_counts_once_however_often_it_appears():
    """Presence, not counts: a repeated word weighs as much as any other n-gram of the prompt."""
    f = Featurizer(bits=12)
    x = f.from_text("apple apple apple pie")  # apple, pie, "apple apple", "apple pie"
    hashed = x.values[x.indices < f.hashed]
    np.testing.assert_allclose(hashed, np.full(len(hashed), 1 / np.sqrt(len(hashed))))
    assert len(hashed) == 4


def test_markers_and_classes():
    f = Featurizer()
    code = dense(f, f.from_text("```python\ndef f(x):\n    return {x: [1, 2]};\n```"))
    prose = dense(f, f.from_text("The quick brown fox jumps over the lazy dog"))
    maths = dense(f, f.from_text("Solve $x^2 + 3x = \\frac{1}{2}$ for x"))
    assert code["code_markers"] > prose["code_markers"] == 0.0
    assert maths["math_markers"] > prose["math_markers"] == 0.0
    assert prose["bias"] == 1.0 and prose["share_upper"] > 0 and prose["share_digit"] == 0.0


def test_caller_features_are_added_by_stable_name_and_checked():
    f = Featurizer(bits=10)
    base = f.from_text("hello world")
    more = f.from_text("hello world", {"tenant_premium": 2.5})
    diff = more.dense(f.size) - base.dense(f.size)
    assert np.count_nonzero(diff) == 1 and abs(diff[np.flatnonzero(diff)[0]]) == pytest.approx(2.5)
    assert f.from_text("hello world", {"tenant_premium": 2.5}).to_json() == more.to_json()
    for bad in ({"x": float("nan")}, {"": 1.0}, {"x": "1"}, {"x": True}, [("x", 1.0)]):
        with pytest.raises(InvalidRequest):
            f.from_text("hi", bad)  # type: ignore[arg-type]


def test_empty_text_and_message_parts():
    f = Featurizer()
    x = f([])
    assert np.all(x.indices >= f.hashed)  # only the dense slots
    messages = [
        {"role": "system", "content": "be brief"},
        {"role": "user", "content": [{"type": "text", "text": "hi there"}]},
    ]
    assert message_text(messages) == "be brief\nhi there"
    assert Features.from_json(f(messages).to_json()).nnz == f(messages).nnz


def test_bad_configuration_raises():
    with pytest.raises(ValueError):
        Featurizer(bits=2)
    with pytest.raises(ValueError):
        Featurizer(max_chars=1)


def test_the_feature_space_is_pinned_to_its_version():
    """Logged features are reused only within ``Featurizer.space``: a change of the computation must bump VERSION."""
    f = Featurizer(bits=16)
    x = f.from_text(PROMPT)
    assert f.space == "v3-b16-c4096"
    assert x.indices[: -len(DENSE_NAMES)].tolist() == [
        1058, 1650, 2183, 3262, 5655, 12686, 14750, 16178, 17463, 19134, 19171, 19345, 21412, 21525,
        27107, 30987, 31389, 31405, 32689, 33288, 34061, 34530, 34640, 37180, 39892, 39970, 46404, 47377,
        51300, 53323, 54392, 54430, 54639, 55614, 56866, 58034, 59093, 60965, 62213, 65010,
    ]  # fmt: skip
    assert hashlib.sha256(x.to_json().encode()).hexdigest()[:16] == "adb699deb577e2d0"  # values too (6 digits)
    assert x.indices.dtype == np.int64 and x.values.dtype == np.float64
