"""Transactional delete range on the embedded cluster (client-go ``rangetask.DeleteRangeTask``).

The outcome is checked in what the server holds (``cluster.engine``): every version and
lock of every key in ``[start, end)`` is gone, nothing outside it is touched — also when a
region splits in the middle of the task and a store fails.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from _txn_helpers import seed
from tikv_mockstore import MockCluster
from tikv_pd.errors import TiKVError
from tikv_pd.rangetask import RangeTaskProgress
from tikv_txn import AsyncTransactionClient
from tikv_txn.delete_range import DeleteRangeTask, unsafe_destroy_range

# Four regions, cut at the user keys 0x40, 0x80 and 0xc0.
KEYS = [
    b"\x00",
    b"\x10a",
    b"\x2f\xff",
    b"\x30",
    b"\x30a",
    b"\x3f\xff\xff",
    b"\x40",
    b"\x50x",
    b"\x7f",
    b"\x80",
    b"\x90y",
    b"\xa0z",
    b"\xaf\xff",
    b"\xb0",
    b"\xb0\x00",
    b"\xc0",
    b"\xd0",
    b"\xff\xff",
]


@pytest.fixture
def cluster() -> Iterator[MockCluster]:
    with MockCluster(stores=3, regions=4) as mock:
        yield mock


def held(cluster: MockCluster, key: bytes) -> bool:
    """Whether the server keeps any version or lock of ``key``."""
    info = cluster.engine.mvcc_by_key(key)
    return bool(info.writes) or info.lock is not None


def region_id(cluster: MockCluster, key: bytes) -> int:
    region = cluster.region_by_key(key, txn=True)
    assert region is not None
    return int(region.id)


def _finished(task: DeleteRangeTask) -> bool:
    return task.finished


def _resume(task: DeleteRangeTask) -> bytes | None:
    return task.resume_key


def in_range(key: bytes, start: bytes, end: bytes) -> bool:
    return start <= key and (not end or key < end)


async def test_deletes_exactly_the_range_across_regions(
    client: AsyncTransactionClient, cluster: MockCluster
) -> None:
    await seed(client, KEYS, b"v1", b"v2")  # two versions of every key
    # A lock inside the range (a prewritten, unfinished transaction) goes too.
    txn = await client.begin()
    txn.put(b"\x90locked", b"x")
    committer = txn._new_committer()
    assert await committer.prepare()
    await committer.prewrite()
    start, end = b"\x30", b"\xb0"
    assert await client.delete_range(start, end) == 3
    for key in [*KEYS, b"\x90locked"]:
        assert held(cluster, key) is not in_range(key, start, end), key
    snap = client.snapshot(await client.current_timestamp())
    expected = {k: b"v2" for k in KEYS if not in_range(k, start, end)}
    assert await snap.batch_get(KEYS) == expected


async def test_split_mid_task_and_store_errors_then_resume(
    client: AsyncTransactionClient, cluster: MockCluster
) -> None:
    await seed(client, KEYS, b"v1", b"v2")  # two versions of every key
    region_of = {k: region_id(cluster, k) for k in (b"\x50", b"\xd0")}
    # A store error that the pipeline retries, and one that stops the task at region 4.
    transient = cluster.faults.add(
        "KvDeleteRange", region=region_of[b"\x50"], status="UNAVAILABLE", times=2
    )
    fatal = cluster.faults.add(
        "KvDeleteRange", region=region_of[b"\xd0"], status="INVALID_ARGUMENT", times=1
    )
    seen: list[RangeTaskProgress] = []
    split: list[bytes] = []

    def on_progress(progress: RangeTaskProgress) -> None:
        seen.append(progress)
        if progress.completed_regions == 1 and not split:
            # Region 3 splits after the task located it, before its request is sent.
            split.extend(r.start_key for r in cluster.split([b"\x90z"], txn=True))

    task = DeleteRangeTask(client.runtime, b"\x10", b"\xe0", concurrency=1, on_progress=on_progress)
    with pytest.raises(TiKVError):
        await task.execute()
    assert transient.hits == 2
    assert fatal.hits == 1
    assert split
    assert task.resume_key == b"\xc0"
    assert not _finished(task)
    assert task.completed_regions == 4  # regions 1, 2 and both halves of region 3
    for key in KEYS:
        assert held(cluster, key) is not in_range(key, b"\x10", b"\xc0"), key
    # Resume: the rest goes, and nothing outside the range.
    assert await task.execute() == 5
    assert _finished(task)
    assert _resume(task) is None
    for key in KEYS:
        assert held(cluster, key) is not in_range(key, b"\x10", b"\xe0"), key
    assert seen[-1].finished
    assert seen[-1].done_until == b"\xe0"
    marks = [p.done_until for p in seen]
    assert marks == sorted(marks)
    assert await task.execute() == 5  # finished: nothing more is sent


async def test_whole_key_space(client: AsyncTransactionClient, cluster: MockCluster) -> None:
    await seed(client, KEYS, b"v1", b"v2")  # two versions of every key
    assert await client.delete_range(b"") == 4
    assert not any(held(cluster, key) for key in KEYS)


async def test_notify_only_deletes_nothing(
    client: AsyncTransactionClient, cluster: MockCluster
) -> None:
    await seed(client, KEYS, b"v1", b"v2")  # two versions of every key
    before = cluster.counters.count("KvDeleteRange")
    assert await client.delete_range(b"\x10", b"\x60", notify_only=True) == 2
    assert cluster.counters.count("KvDeleteRange") - before == 2
    assert all(held(cluster, key) for key in KEYS)


async def test_empty_range_and_bad_arguments(client: AsyncTransactionClient) -> None:
    assert await client.delete_range(b"\x50", b"\x50") == 0
    with pytest.raises(ValueError, match="greater"):
        await client.delete_range(b"\x60", b"\x50")
    with pytest.raises(TypeError):
        await client.delete_range("a")  # type: ignore[arg-type]
    with pytest.raises(TypeError):
        DeleteRangeTask(client.runtime, b"a", b"b", notify_only=1)  # type: ignore[arg-type]


async def test_unsafe_destroy_range_wipes_the_range_on_every_store(
    client: AsyncTransactionClient, cluster: MockCluster
) -> None:
    await seed(client, KEYS, b"v1", b"v2")  # two versions of every key
    before = cluster.counters.count("UnsafeDestroyRange")
    assert await unsafe_destroy_range(client.runtime, client._pd, b"\x30", b"\xb0") == 3
    assert cluster.counters.count("UnsafeDestroyRange") - before == 3
    for key in KEYS:
        assert held(cluster, key) is not in_range(key, b"\x30", b"\xb0"), key
    with pytest.raises(ValueError, match="non-empty"):
        await unsafe_destroy_range(client.runtime, client._pd, b"", b"\x10")


async def test_unsafe_destroy_range_reports_a_failed_store(
    client: AsyncTransactionClient, cluster: MockCluster
) -> None:
    await seed(client, KEYS, b"v1", b"v2")  # two versions of every key
    cluster.faults.add("UnsafeDestroyRange", store=2, status="UNAVAILABLE", times=1)
    with pytest.raises(TiKVError, match="store 2"):
        await unsafe_destroy_range(client.runtime, client._pd, b"\x30", b"\xb0")
    # The other stores did their part; calling again finishes the job.
    assert await unsafe_destroy_range(client.runtime, client._pd, b"\x30", b"\xb0") == 3
    for key in KEYS:
        assert held(cluster, key) is not in_range(key, b"\x30", b"\xb0"), key
