"""Call ids: 32 hex digits, time-ordered, unique across threads, spawned processes and forks."""

from __future__ import annotations

import multiprocessing as mp
import os
import threading
import time

import pytest

from zeta_adaptive._ids import new_call_id

PER_WORKER = 5_000


def _ids(n: int) -> list[str]:
    return [new_call_id() for _ in range(n)]


def _ids_of_process(n: int) -> tuple[int, list[str]]:
    return os.getpid(), _ids(n)


def test_format_and_embedded_time():
    before = time.time_ns() // 1_000_000
    call_id = new_call_id()
    after = time.time_ns() // 1_000_000
    assert len(call_id) == 32 and int(call_id, 16) >= 0 and call_id == call_id.lower()
    assert before <= int(call_id[:12], 16) <= after


def test_ids_of_one_process_sort_in_the_order_they_were_made():
    ids = _ids(20_000)
    assert ids == sorted(ids)
    assert len(set(ids)) == len(ids)
    assert len({i[12:24] for i in ids}) == 1  # one process prefix


def test_unique_across_threads():
    out: list[list[str]] = [[] for _ in range(8)]
    threads = [threading.Thread(target=lambda slot=slot: slot.extend(_ids(PER_WORKER))) for slot in out]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=30)
    assert not any(t.is_alive() for t in threads)
    every = [i for slot in out for i in slot]
    assert len(every) == 8 * PER_WORKER
    assert len(set(every)) == len(every)
    for slot in out:
        assert slot == sorted(slot)  # each thread sees the shared counter increase


@pytest.mark.parametrize("method", ["spawn", "fork"])
@pytest.mark.slow
def test_unique_across_processes(method):
    """Worker processes (fresh interpreters, or forks of this one after it made ids) never collide
    with each other or with the parent, and each has its own prefix. A loaded machine may hand two
    chunks to one worker, so prefixes are counted per process that made ids, not per chunk."""
    parent_before = _ids(1_000)  # a fork inherits the module state as it is now
    ctx = mp.get_context(method)
    with ctx.Pool(4) as pool:
        result = pool.map_async(_ids_of_process, [PER_WORKER] * 4)
        parent_after = _ids(PER_WORKER)
        made = result.get(timeout=60)
    chunks = [chunk for _, chunk in made]
    every = parent_before + parent_after + [i for chunk in chunks for i in chunk]
    assert len(set(every)) == len(every) == 1_000 + 5 * PER_WORKER
    prefixes: dict[int, set[str]] = {}
    for pid, chunk in made:
        prefixes.setdefault(pid, set()).update(i[12:24] for i in chunk)
    assert all(len(p) == 1 for p in prefixes.values())  # one prefix per process
    assert len({i[12:24] for i in parent_before + parent_after}) == 1
    assert len({i[12:24] for i in every}) == 1 + len(prefixes)  # the parent's and each worker's, all different
    for chunk in chunks:
        assert chunk == sorted(chunk)


@pytest.mark.slow
def test_a_forked_child_reseeds():
    parent_prefix = new_call_id()[12:24]
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # child: report its first id and leave at once
        os.write(write, new_call_id().encode())
        os._exit(0)
    os.close(write)
    try:
        child_id = os.read(read, 64).decode()
    finally:
        os.close(read)
        os.waitpid(pid, 0)
    assert len(child_id) == 32
    assert child_id[12:24] != parent_prefix
