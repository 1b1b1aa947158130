"""Read-ts validation in the pipeline (client-go TestRegionRequestValidateReadTS).

With ``Config.validate_read_ts`` (client-go ``EnableTSValidation``, off by default) every
read's timestamp is checked against PD's before its request leaves
(``PDOracle.validate_read_ts``): a ts from the future raises ``FutureTSReadError``, a
stale read at ``2**64 - 1`` ``LatestStaleReadError``; past and current timestamps, and a
normal read at ``2**64 - 1`` (the latest data), pass.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from tikv_mockstore import MockCluster
from tikv_pd.config import Config
from tikv_pd.errors import FutureTSReadError, LatestStaleReadError
from tikv_pd.oracle import compose_ts, extract_physical
from tikv_pd.request import READ_TS_FIELDS
from tikv_txn import AsyncTransactionClient

KEY = b"\x10validate"
MAX_TS = 2**64 - 1


@pytest.fixture
def cluster() -> Iterator[MockCluster]:
    with MockCluster(stores=1) as mock:
        yield mock


def shifted(ts: int, ms: int) -> int:
    return compose_ts(extract_physical(ts) + ms, ts & ((1 << 18) - 1))


def test_read_commands() -> None:
    assert READ_TS_FIELDS == {
        "Get": "version",
        "Scan": "version",
        "BatchGet": "version",
        "BufferBatchGet": "version",
        "Coprocessor": "start_ts",
        "ScanLock": "max_version",
    }


async def test_future_and_latest_stale_reads_are_refused_before_sending(
    cluster: MockCluster,
) -> None:
    async with await AsyncTransactionClient.connect(
        cluster.pd_endpoints, config=Config(validate_read_ts=True)
    ) as client:
        async with client.begin() as txn:
            txn.put(KEY, b"v")
        now = await client.current_timestamp()
        sent = cluster.counters.count("KvGet")
        # Current and past timestamps pass, normal and stale reads alike.
        for ts in (now, shifted(now, -60_000)):
            for stale in (False, True):
                await client.snapshot(ts, stale_read=stale).get(KEY)
        assert cluster.counters.count("KvGet") == sent + 4
        # A minute ahead of PD: refused, nothing sent.
        future = shifted(now, 60_000)
        for stale in (False, True):
            with pytest.raises(FutureTSReadError) as info:
                await client.snapshot(future, stale_read=stale).get(KEY)
            assert info.value.read_ts == future and info.value.current_ts < future
        with pytest.raises(FutureTSReadError):
            await client.snapshot(future).batch_get([KEY, b"\x10other"])
        assert cluster.counters.count("KvGet") == sent + 4
        assert cluster.counters.count("KvBatchGet") == 0
        # The latest ts: fine for a normal read, refused for a stale read.
        assert await client.snapshot(MAX_TS).get(KEY) == b"v"
        with pytest.raises(LatestStaleReadError):
            await client.snapshot(MAX_TS, stale_read=True).get(KEY)


async def test_off_by_default(cluster: MockCluster) -> None:
    async with await AsyncTransactionClient.connect(cluster.pd_endpoints) as client:
        now = await client.current_timestamp()
        before = cluster.counters.count("KvGet")
        assert await client.snapshot(shifted(now, 60_000)).get(KEY) is None
        assert cluster.counters.count("KvGet") == before + 1
