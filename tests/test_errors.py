"""Every ZetaError survives pickling (a process pool sends a worker's exception back pickled) with its
message and attributes, whatever its constructor takes."""

from __future__ import annotations

import multiprocessing
import pickle
from concurrent.futures import ProcessPoolExecutor

import pytest

from zeta_adaptive import (
    AllModelsFailed,
    ConfigError,
    FeedbackError,
    InvalidRequest,
    MissingDependency,
    ReplayError,
    RequestRejected,
    StoreError,
    StreamBroken,
    UnknownTaskType,
    ZetaError,
)
from zeta_adaptive._results import Attempt

ATTEMPTS = [Attempt("small", "server_error", 0.1, 500, error="boom"), Attempt("big", "timeout", 2.0)]
ERRORS = [
    ConfigError("routes.code.models", "is empty"),
    UnknownTaskType("poetry", ["code", "qa"]),
    InvalidRequest("messages must be a list"),
    RequestRejected("c1", ATTEMPTS[:1]),
    AllModelsFailed("c1", "code", ATTEMPTS, "deadline"),
    StreamBroken("c1", ATTEMPTS[:1]),
    FeedbackError("call c1 already has feedback", "already_rated"),
    StoreError("the store is closed"),
    ReplayError("no logged round"),
    MissingDependency("matplotlib", "plots"),
]


@pytest.mark.parametrize("error", ERRORS, ids=lambda e: type(e).__name__)
def test_an_error_pickles_with_its_message_and_attributes(error):
    copy = pickle.loads(pickle.dumps(error))
    assert type(copy) is type(error) and isinstance(copy, ZetaError)
    assert str(copy) == str(error) and copy.args == error.args and vars(copy) == vars(error)


def _fail(index: int) -> None:
    raise ERRORS[index]


def test_an_error_raised_in_a_process_pool_reaches_the_caller_as_itself():
    with ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn")) as pool:
        with pytest.raises(AllModelsFailed, match="every candidate failed") as caught:
            pool.submit(_fail, 4).result(timeout=60)
    assert caught.value.attempts == ATTEMPTS and caught.value.task_type == "code"
