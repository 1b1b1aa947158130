"""Per-operation TiKV traffic (client-go TestNetworkCollectorOnReq / OnResp: ExecDetails'
``UnpackedBytes{Sent,Received}KV{Total,CrossZone}``), collected with ``collect_traffic``.

Every attempt's request and response sizes are added; cross-zone when the client's
``Config.zone_label`` and the target store's ``zone`` label are known and differ. The
sizes are checked against what an interceptor saw on the wire.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from tikv_mockstore import MockCluster
from tikv_pd.config import Config
from tikv_pd.interceptor import RPCInvoker, RPCRequest, rpc_interceptor
from tikv_pd.request import TrafficDetails, collect_traffic
from tikv_raw import AsyncRawClient, RawClient

KEYS = [b"a", b"c", b"e", b"g"]


@pytest.fixture
def cluster() -> Iterator[MockCluster]:
    with MockCluster(stores=3, split_raw=[b"b", b"d", b"f"]) as mock:
        for store in mock.stores():
            mock.set_store_labels(store.id, {"zone": f"z{store.id}"})
        yield mock


class Wire:
    def __init__(self) -> None:
        self.sent: list[tuple[int, int]] = []  # (store, bytes)
        self.received: list[tuple[int, int]] = []

    def interceptor(self) -> Any:
        def wrap(next: RPCInvoker) -> RPCInvoker:
            async def invoke(rpc: RPCRequest) -> Any:
                self.sent.append((rpc.store_id, rpc.request.ByteSize()))
                response = await next(rpc)
                self.received.append((rpc.store_id, response.ByteSize()))
                return response

            return invoke

        return rpc_interceptor("wire", wrap)


async def test_bytes_of_every_attempt_are_counted_with_cross_zone_parts(
    cluster: MockCluster,
) -> None:
    stores = [s.id for s in cluster.stores()]
    local = stores[0]
    # Leaders spread over the stores, so some traffic crosses zones.
    for i, key in enumerate(KEYS):
        region = cluster.region_by_key(key)
        assert region is not None
        cluster.transfer_leader(region.id, stores[i % len(stores)])
    async with await AsyncRawClient.connect(
        cluster.pd_endpoints, config=Config(zone_label=f"z{local}")
    ) as raw:
        await raw.batch_put(dict.fromkeys(KEYS, b"v" * 50))
        wire = Wire()
        raw.add_rpc_interceptor(wire.interceptor())
        with collect_traffic() as traffic:
            assert await raw.batch_get(KEYS) == dict.fromkeys(KEYS, b"v" * 50)
            assert await raw.get(b"a") == b"v" * 50
        # After the block nothing more is counted.
        await raw.get(b"c")
    counted = wire.sent[:-1], wire.received[:-1]
    assert traffic.requests == len(counted[0]) >= 5  # four regions + one get
    assert traffic.bytes_sent == sum(n for _, n in counted[0])
    assert traffic.bytes_received == sum(n for _, n in counted[1]) > 200
    assert traffic.bytes_sent_cross_zone == sum(n for s, n in counted[0] if s != local)
    assert traffic.bytes_received_cross_zone == sum(n for s, n in counted[1] if s != local)
    assert 0 < traffic.bytes_sent_cross_zone < traffic.bytes_sent
    assert 0 < traffic.bytes_received_cross_zone < traffic.bytes_received


async def test_unknown_zone_is_never_cross_zone_and_details_accumulate(
    cluster: MockCluster,
) -> None:
    async with await AsyncRawClient.connect(cluster.pd_endpoints) as raw:
        await raw.put(b"a", b"v")
        mine = TrafficDetails()
        with collect_traffic(mine):
            await raw.get(b"a")
        with collect_traffic(mine) as again:
            await raw.get(b"a")
        assert again is mine
        assert mine.requests == 2
        assert mine.bytes_sent > 0 and mine.bytes_sent_cross_zone == 0
        assert mine.bytes_received_cross_zone == 0
    with pytest.raises(TypeError, match="TrafficDetails"), collect_traffic(object()):  # type: ignore[arg-type]
        pass


def test_the_sync_facade_is_counted(cluster: MockCluster) -> None:
    with RawClient.connect(cluster.pd_endpoints) as raw:
        raw.put(b"a", b"v")
        with collect_traffic() as traffic:
            assert raw.get(b"a") == b"v"
        assert traffic.requests == 1 and traffic.bytes_received > 0
