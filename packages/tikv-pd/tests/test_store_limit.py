"""Per-store limit of requests in flight (client-go TestStoreTokenLimit, ``kv.StoreLimit``).

With ``Config.store_limit`` set, a request to a store that already has that many requests
of this client in flight fails at once with :class:`TokenLimitError` naming the store;
nothing is sent. Tokens come back when requests finish, fail or are cancelled.
"""

from __future__ import annotations

import asyncio
import pickle
import time
from collections.abc import Iterator

import pytest
from tikv_mockstore import MockCluster
from tikv_pd.config import Config
from tikv_pd.errors import TokenLimitError
from tikv_raw import AsyncRawClient

NO_HANG = 60.0


@pytest.fixture
def cluster() -> Iterator[MockCluster]:
    with MockCluster(stores=1) as mock:
        yield mock


async def wait_hanging(cluster: MockCluster, count: int) -> None:
    deadline = time.monotonic() + NO_HANG
    while cluster.faults.hanging() < count:
        assert time.monotonic() < deadline, "requests never reached the store"
        await asyncio.sleep(0.01)


def test_config_and_error() -> None:
    assert Config().store_limit == 0  # client-go config/client.go: no limit
    with pytest.raises(ValueError, match="store_limit"):
        Config(store_limit=-1)
    err = pickle.loads(pickle.dumps(TokenLimitError(4, 500)))
    assert (err.store_id, err.limit) == (4, 500)
    assert "store id = 4" in str(err)


async def test_requests_beyond_the_limit_fail_at_once(cluster: MockCluster) -> None:
    store = cluster.stores()[0].id
    async with await AsyncRawClient.connect(
        cluster.pd_endpoints, config=Config(store_limit=2)
    ) as raw:
        await raw.put(b"k", b"v")
        hang = cluster.faults.add("RawGet", hang=True)
        held = [asyncio.ensure_future(raw.get(b"k")) for _ in range(2)]
        await wait_hanging(cluster, 2)
        sent = cluster.counters.count("RawGet")
        with pytest.raises(TokenLimitError) as info:
            await raw.get(b"k")
        assert (info.value.store_id, info.value.limit) == (store, 2)
        assert cluster.counters.count("RawGet") == sent  # refused before sending
        # A cancelled request gives its token back.
        held[0].cancel()
        with pytest.raises(asyncio.CancelledError):
            await held[0]
        cluster.faults.remove(hang)
        assert await held[1] == b"v"
        # Both tokens are back: two reads at once go through.
        assert await asyncio.gather(raw.get(b"k"), raw.get(b"k")) == [b"v", b"v"]


async def test_no_limit_by_default(cluster: MockCluster) -> None:
    async with await AsyncRawClient.connect(cluster.pd_endpoints) as raw:
        await raw.put(b"k", b"v")
        hang = cluster.faults.add("RawGet", hang=True)
        held = [asyncio.ensure_future(raw.get(b"k")) for _ in range(5)]
        await wait_hanging(cluster, 5)
        cluster.faults.remove(hang)
        assert await asyncio.gather(*held) == [b"v"] * 5
