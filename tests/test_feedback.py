"""Delayed feedback: validated before anything is written or learned, one accuracy per answered call,
also for calls made by an earlier Router on the same log."""

from __future__ import annotations

import math
import sqlite3
import threading
from typing import Any

import numpy as np
import pytest
from in_process import fake_router

from zeta_adaptive import AllModelsFailed, FeedbackError, RequestRejected, ZetaError
from zeta_adaptive._feedback import validate_accuracy
from zeta_adaptive.simulate import ModelSpec, Step

HELLO = [{"role": "user", "content": "Hello"}]


def make_config(tmp_path) -> dict[str, Any]:
    return {
        "store": f"sqlite:///{tmp_path}/x.db",
        "journal_dir": str(tmp_path / "journal"),
        "seed": 3,
        "breaker": {"consecutive_failures": 10_000, "min_calls": 10_000, "window": 10_000},
        "models": {
            "a": {"base_url": "http://a:8000/v1", "timeout_s": 1.0},
            "b": {"base_url": "http://b:8000/v1", "timeout_s": 1.0},
        },
        "routes": {
            "simple": {"models": ["a", "b"], "policy": "static"},
            "learned": {"models": ["a", "b"], "policy": "thompson"},
        },
    }


def feedback_rows(tmp_path) -> list[tuple]:
    con = sqlite3.connect(str(tmp_path / "x.db"))
    try:
        return list(con.execute("SELECT call_id, task_type, model, accuracy FROM feedback ORDER BY ts"))
    finally:
        con.close()


def test_feedback_is_stored_and_learned(tmp_path):
    with fake_router(make_config(tmp_path), ModelSpec("a", script=["error"])) as router:
        result = router.chat("learned", HELLO)
        model = result.model
        i = router.policies["learned"].index[model]
        before_n = router.policies["learned"].acc_n.copy()
        router.feedback(result.call_id, 0.8)
        assert router.flush(timeout=10)
        assert router.store.count("feedback") == 1
        policy = router.policies["learned"]
        assert policy.acc_n[i] == pytest.approx(before_n[i] + 1)
        assert policy.acc_sum[i] == pytest.approx(0.8)
        other = 1 - i
        assert policy.acc_n[other] == before_n[other]
        # only the rated route learned
        assert router.policies["simple"].acc_n.sum() == 0
        assert router.store.has_feedback(result.call_id)
    assert feedback_rows(tmp_path) == [(result.call_id, "learned", model, 0.8)]


def test_boundary_accuracies_accepted(tmp_path):
    values = [0, 1, 0.0, 1.0, 0.5, 1e-9]
    with fake_router(make_config(tmp_path)) as router:
        for value in values:
            result = router.chat("simple", HELLO)
            router.feedback(result.call_id, value)
        assert router.policies["simple"].acc_n[0] == len(values)
        assert router.policies["simple"].acc_sum[0] == pytest.approx(sum(values))
    assert [r[3] for r in feedback_rows(tmp_path)] == pytest.approx([float(v) for v in values])


BAD_VALUES = [math.nan, -0.1, 1.5, "0.5", True, False, None, math.inf, -math.inf, [0.5], 1 + 1e-12]


def test_invalid_accuracy_raises_and_writes_nothing(tmp_path):
    with fake_router(make_config(tmp_path)) as router:
        result = router.chat("simple", HELLO)
        for value in BAD_VALUES:
            with pytest.raises(FeedbackError):
                router.feedback(result.call_id, value)
        assert router.flush(timeout=10)
        assert router.store.count("feedback") == 0
        assert router.policies["simple"].acc_n.sum() == 0
        # the rejected attempts did not use up the call's one feedback
        router.feedback(result.call_id, 0.5)
        assert router.flush(timeout=10)
        assert router.store.count("feedback") == 1
    assert feedback_rows(tmp_path) == [(result.call_id, "simple", "a", 0.5)]


def test_unknown_or_malformed_call_id(tmp_path):
    with fake_router(make_config(tmp_path)) as router:
        router.chat("simple", HELLO)
        for call_id in ["0" * 32, "not-a-call", "", 123, None]:
            with pytest.raises(FeedbackError):
                router.feedback(call_id, 0.5)  # type: ignore[arg-type]
        assert router.flush(timeout=10)
        assert router.store.count("feedback") == 0
        assert router.policies["simple"].acc_n.sum() == 0


def test_feedback_error_is_a_value_error(tmp_path):
    with fake_router(make_config(tmp_path)) as router:
        with pytest.raises(ValueError):
            router.feedback("0" * 32, 0.5)
        with pytest.raises(ZetaError):
            router.feedback("0" * 32, 0.5)


def test_feedback_on_failed_call_raises(tmp_path):
    specs = ModelSpec("a", script=["error"]), ModelSpec("b", script=["hang"])
    config = make_config(tmp_path)
    config["models"]["b"]["timeout_s"] = 0.2  # the hang ends the call as soon as it times out
    with fake_router(config, *specs) as router:
        with pytest.raises(AllModelsFailed) as info:
            router.chat("simple", HELLO)
        with pytest.raises(FeedbackError, match="no answer"):
            router.feedback(info.value.call_id, 0.9)
        assert router.flush(timeout=10)
        assert router.store.count("feedback") == 0
        assert router.policies["simple"].acc_n.sum() == 0


def test_feedback_on_rejected_call_raises(tmp_path):
    with fake_router(make_config(tmp_path), ModelSpec("a", script=[Step("error", status=400)])) as router:
        with pytest.raises(RequestRejected) as info:
            router.chat("simple", HELLO)
        with pytest.raises(FeedbackError):
            router.feedback(info.value.call_id, 0.9)
    assert feedback_rows(tmp_path) == []


def test_second_feedback_on_same_call_raises(tmp_path):
    with fake_router(make_config(tmp_path)) as router:
        result = router.chat("simple", HELLO)
        router.feedback(result.call_id, 0.7)
        with pytest.raises(FeedbackError, match="already"):
            router.feedback(result.call_id, 0.2)
        with pytest.raises(FeedbackError):
            router.feedback(result.call_id, 0.7)
        assert router.policies["simple"].acc_n[0] == 1
        assert router.policies["simple"].acc_sum[0] == pytest.approx(0.7)
    assert [r[3] for r in feedback_rows(tmp_path)] == [0.7]


def test_concurrent_feedback_on_one_call_counts_once(tmp_path):
    with fake_router(make_config(tmp_path)) as router:
        result = router.chat("simple", HELLO)
        accepted, rejected = [], []
        barrier = threading.Barrier(8)

        def give(value: float) -> None:
            barrier.wait()
            try:
                router.feedback(result.call_id, value)
                accepted.append(value)
            except FeedbackError:
                rejected.append(value)

        threads = [threading.Thread(target=give, args=(i / 10,)) for i in range(8)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(10)
        assert len(accepted) == 1 and len(rejected) == 7
        assert router.policies["simple"].acc_n[0] == 1
        assert router.policies["simple"].acc_sum[0] == pytest.approx(accepted[0])
    assert [r[3] for r in feedback_rows(tmp_path)] == [pytest.approx(accepted[0])]


def test_feedback_for_call_of_previous_router(tmp_path):
    cfg = make_config(tmp_path)
    with fake_router(cfg, ModelSpec("a", script=["ok", "error"]), ModelSpec("b", script=["error"])) as first:
        answered = first.chat("simple", HELLO)  # a answers
        with pytest.raises(AllModelsFailed) as failed:
            first.chat("simple", HELLO)  # a and b fail
    assert answered.model == "a"
    # a new Router instance, same SQLite file: it knows the calls only through the log
    with fake_router(cfg) as second:
        policy = second.policies["simple"]
        assert policy.acc_n.sum() == 0
        second.feedback(answered.call_id, 0.6)
        assert policy.acc_n[0] == pytest.approx(1)
        assert policy.acc_sum[0] == pytest.approx(0.6)
        with pytest.raises(FeedbackError, match="already"):
            second.feedback(answered.call_id, 0.6)
        with pytest.raises(FeedbackError, match="no answer"):
            second.feedback(failed.value.call_id, 0.6)
        with pytest.raises(FeedbackError, match="unknown"):
            second.feedback("f" * 32, 0.6)
    assert feedback_rows(tmp_path) == [(answered.call_id, "simple", "a", 0.6)]
    # a third Router sees the stored feedback and rejects a duplicate too
    with fake_router(cfg) as third:
        with pytest.raises(FeedbackError, match="already"):
            third.feedback(answered.call_id, 0.1)
        # and its warm start learned the stored accuracy
        assert third.policies["simple"].acc_sum[0] == pytest.approx(0.6)
    assert len(feedback_rows(tmp_path)) == 1


def test_feedback_given_by_previous_router_is_not_repeated(tmp_path):
    cfg = make_config(tmp_path)
    with fake_router(cfg) as first:
        result = first.chat("simple", HELLO)
        first.feedback(result.call_id, 0.4)
    with fake_router(cfg) as second:
        with pytest.raises(FeedbackError):
            second.feedback(result.call_id, 0.9)
        assert second.policies["simple"].acc_sum[0] == pytest.approx(0.4)  # from the warm start only
    assert [r[3] for r in feedback_rows(tmp_path)] == [0.4]


@pytest.mark.slow
def test_duplicate_feedback_across_two_live_routers(tmp_path):
    """Two workers share one log. Feedback for a call reached the other worker first; the worker
    that made the call must not accept (and learn) a second accuracy the log will never hold."""
    cfg = make_config(tmp_path)
    with fake_router(cfg) as maker, fake_router(cfg) as other:
        result = maker.chat("simple", HELLO)
        assert maker.flush(timeout=10)
        other.feedback(result.call_id, 0.9)
        assert other.flush(timeout=10)
        with pytest.raises(FeedbackError):
            maker.feedback(result.call_id, 0.1)
        assert maker.policies["simple"].acc_n.sum() == 0
    assert [r[3] for r in feedback_rows(tmp_path)] == [0.9]


def test_feedback_after_close_is_refused(tmp_path):
    router = fake_router(make_config(tmp_path))
    result = router.chat("simple", HELLO)
    router.close()
    with pytest.raises(ZetaError):
        router.feedback(result.call_id, 0.5)
    assert feedback_rows(tmp_path) == []


# -- validate_accuracy ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "value, expected", [(0, 0.0), (1, 1.0), (0.25, 0.25), (1.0, 1.0), (-0.0, 0.0), (np.float64(0.3), 0.3)]
)
def test_validate_accuracy_accepts(value, expected):
    got = validate_accuracy(value)
    assert got == expected
    assert type(got) is float


@pytest.mark.parametrize(
    "value",
    [
        math.nan,
        math.inf,
        -math.inf,
        -1e-12,
        1.0000001,
        2,
        -1,
        "0.5",
        "",
        None,
        True,
        False,
        [0.5],
        (0.5,),
        {"a": 1},
        0.5j,
        np.bool_(True),
    ],
    ids=repr,
)
def test_validate_accuracy_rejects(value):
    with pytest.raises(FeedbackError):
        validate_accuracy(value)


@pytest.mark.parametrize("value", [np.float32(0.25), np.int64(1), np.float16(0.5)], ids=repr)
def test_validate_accuracy_accepts_numpy_scalars(value):
    """Accuracies often come out of numpy (np.mean over float32 arrays): they are numbers in [0, 1]."""
    assert validate_accuracy(value) == pytest.approx(float(value))


def test_validate_accuracy_error_message_names_value():
    with pytest.raises(FeedbackError, match=r"1\.5"):
        validate_accuracy(1.5)
    with pytest.raises(FeedbackError, match="nan"):
        validate_accuracy(math.nan)
