"""Stores' safe ts and client-go's min-safe-ts rule (unit, then against the mock cluster)."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from typing import Any

import pytest
from tikv_pd.config import Config
from tikv_pd.pd_client import PDClient
from tikv_pd.safe_ts import SafeTsCache, fetch_store_safe_ts
from tikv_pd.transport import Transport

mockstore = pytest.importorskip("tikv_mockstore")
MockCluster = mockstore.MockCluster

LOGICAL_BITS = 18


def test_min_safe_ts_rule() -> None:
    cache = SafeTsCache()
    assert cache.min_safe_ts([]) == 0  # no stores
    cache.set(1, 500)
    cache.set(2, 300)
    cache.set(3, 0)  # zero values are skipped
    assert cache.min_safe_ts([1, 2, 3]) == 300
    assert cache.min_safe_ts([3]) == 0  # only zeros
    assert cache.min_safe_ts([1, 2, 4]) == 0  # store 4 never answered
    cache.forget(2)
    assert cache.get(2) == 0
    assert cache.min_safe_ts([1, 2]) == 0
    assert cache.min_safe_ts([1]) == 500


@pytest.fixture
def cluster() -> Iterator[Any]:
    with MockCluster(stores=3, regions=2) as c:
        c.clock.freeze()
        yield c


@pytest.fixture
async def parts(cluster: Any) -> AsyncIterator[tuple[PDClient, Transport]]:
    config = Config(pd_timeout=2.0, dial_timeout=2.0)
    pd = await PDClient.connect(cluster.pd_endpoints, config=config)
    transport = Transport(config)
    try:
        yield pd, transport
    finally:
        await transport.close()
        await pd.close()


async def test_min_safe_ts_over_the_mock_cluster(
    cluster: Any, parts: tuple[PDClient, Transport]
) -> None:
    mock = cluster
    pd, transport = parts
    cache = SafeTsCache()
    stores = sorted(s.id for s in mock.stores())
    mock.clock.advance(10_000)
    now = mock.clock.now_ms()
    mock.set_safe_ts_lag(stores[1], 3000)
    asked = await fetch_store_safe_ts(pd, transport, cache)
    assert sorted(asked) == stores
    assert cache.get(stores[0]) == now << LOGICAL_BITS
    assert cache.get(stores[1]) == (now - 3000) << LOGICAL_BITS
    assert cache.min_safe_ts(asked) == (now - 3000) << LOGICAL_BITS
    # A held store stops the min safe ts from advancing.
    held = mock.hold_safe_ts(stores[2])
    mock.clock.advance(60_000)
    asked = await fetch_store_safe_ts(pd, transport, cache)
    assert cache.min_safe_ts(asked) == held
    # A store that does not answer makes it unknown (0), as client-go.
    mock.stop_store(stores[0], move_leaders=True)
    asked = await fetch_store_safe_ts(pd, transport, cache, timeout=2.0)
    assert cache.min_safe_ts(asked) == 0
