"""Raw KV over real gRPC: a dict model, TTL with the clock, CAS, checksum, scans, API versions."""

from __future__ import annotations

import random
from collections.abc import Iterator

import pytest
from tikv_mockstore import MockCluster
from tikv_mockstore.testing import Stubs, context_for
from tikv_proto import kvrpcpb_pb2, tikvpb_pb2_grpc


def crc64_reference(data: bytes) -> int:
    """Bitwise CRC-64/XZ, written independently of the table-driven one under test."""
    crc = (1 << 64) - 1
    for byte in data:
        crc ^= byte
        for _ in range(8):
            crc = (crc >> 1) ^ (0xC96C5795D7870F42 * (crc & 1))
    return crc ^ ((1 << 64) - 1)


def test_crc_reference_check_value() -> None:
    assert crc64_reference(b"123456789") == 0x995DC9BBDF1939FA


class RawClient:
    """A tiny raw client: routes by the cluster's current regions and pages scans."""

    def __init__(self, stubs: Stubs, cf: str = "", api_version: int = kvrpcpb_pb2.V1) -> None:
        self.stubs = stubs
        self.cf = cf
        self.api = kvrpcpb_pb2.APIVersion.ValueType(api_version)

    def _route(self, key: bytes) -> tuple[tikvpb_pb2_grpc.TikvStub, kvrpcpb_pb2.Context]:
        return self.stubs.route(key, api_version=self.api)

    def put(self, key: bytes, value: bytes, ttl: int = 0) -> kvrpcpb_pb2.RawPutResponse:
        stub, ctx = self._route(key)
        return stub.RawPut(
            kvrpcpb_pb2.RawPutRequest(context=ctx, key=key, value=value, cf=self.cf, ttl=ttl)
        )

    def get(self, key: bytes) -> bytes | None:
        stub, ctx = self._route(key)
        resp = stub.RawGet(kvrpcpb_pb2.RawGetRequest(context=ctx, key=key, cf=self.cf))
        assert not resp.HasField("region_error"), resp
        assert not resp.error, resp.error
        return None if resp.not_found else resp.value

    def delete(self, key: bytes) -> None:
        stub, ctx = self._route(key)
        resp = stub.RawDelete(kvrpcpb_pb2.RawDeleteRequest(context=ctx, key=key, cf=self.cf))
        assert not resp.error and not resp.HasField("region_error")

    def scan(self, start: bytes, end: bytes, limit: int) -> list[tuple[bytes, bytes]]:
        out: list[tuple[bytes, bytes]] = []
        cur = start
        while len(out) < limit:
            region = self.stubs.cluster.region_by_key(cur)
            assert region is not None
            stub = self.stubs.tikv(region.leader_store_id)
            resp = stub.RawScan(
                kvrpcpb_pb2.RawScanRequest(
                    context=context_for(region, api_version=self.api),
                    start_key=cur,
                    end_key=end,
                    limit=limit - len(out),
                    cf=self.cf,
                )
            )
            assert not resp.HasField("region_error"), resp.region_error
            out += [(kv.key, kv.value) for kv in resp.kvs]
            if not region.end_key or (end and region.end_key >= end):
                break
            cur = region.end_key
        return out

    def reverse_scan(self, upper: bytes, lower: bytes, limit: int) -> list[tuple[bytes, bytes]]:
        out: list[tuple[bytes, bytes]] = []
        cur = upper
        while len(out) < limit:
            # The region whose range holds keys just below `cur`.
            region = self.stubs.cluster.region_by_key(cur)
            assert region is not None
            if region.start_key == cur and cur:
                prev = self.stubs.cluster.state.prev_region(cur)
                assert prev is not None
                region = prev
            resp = self.stubs.tikv(region.leader_store_id).RawScan(
                kvrpcpb_pb2.RawScanRequest(
                    context=context_for(region),
                    start_key=cur,
                    end_key=lower,
                    limit=limit - len(out),
                    reverse=True,
                    cf=self.cf,
                )
            )
            assert not resp.HasField("region_error"), resp.region_error
            out += [(kv.key, kv.value) for kv in resp.kvs]
            if not region.start_key or region.start_key <= lower:
                break
            cur = region.start_key
        return out


@pytest.fixture(scope="module")
def cluster() -> Iterator[MockCluster]:
    with MockCluster(stores=3, split_raw=[b"d", b"k", b"r"]) as c:
        yield c


@pytest.fixture
def stubs(cluster: MockCluster) -> Iterator[Stubs]:
    with Stubs(cluster) as s:
        yield s


def test_against_a_dict_model(cluster: MockCluster, stubs: Stubs) -> None:
    rng = random.Random(7)
    client = RawClient(stubs, cf="write")
    model: dict[bytes, bytes] = {}
    keys = [bytes([rng.choice(b"abdeklmrsz")]) + bytes([rng.randrange(4)]) for _ in range(40)]
    for step in range(400):
        op = rng.random()
        key = rng.choice(keys)
        if op < 0.4:
            value = f"v{step}".encode()
            assert not client.put(key, value).error
            model[key] = value
        elif op < 0.55:
            client.delete(key)
            model.pop(key, None)
        elif op < 0.65:
            batch = rng.sample(keys, 5)
            stub, ctx = stubs.route(batch[0])
            region = cluster.region_by_key(batch[0])
            assert region is not None
            mine = [k for k in batch if region.contains(k)]
            resp = stub.RawBatchPut(
                kvrpcpb_pb2.RawBatchPutRequest(
                    context=ctx,
                    cf="write",
                    pairs=[kvrpcpb_pb2.KvPair(key=k, value=b"b" + k) for k in mine],
                )
            )
            assert not resp.error and not resp.HasField("region_error")
            model.update({k: b"b" + k for k in mine})
            got = stub.RawBatchGet(
                kvrpcpb_pb2.RawBatchGetRequest(
                    context=ctx, cf="write", keys=[*mine, batch[0] + b"-missing"]
                )
            )
            assert {p.key: p.value for p in got.pairs} == {k: model[k] for k in mine}
        elif op < 0.85:
            assert client.get(key) == model.get(key)
        else:
            lo, hi = sorted(rng.sample(keys, 2))
            limit = rng.randrange(1, 30)
            want = sorted((k, v) for k, v in model.items() if lo <= k < hi)[:limit]
            assert client.scan(lo, hi, limit) == want
            want_rev = sorted(((k, v) for k, v in model.items() if lo <= k < hi), reverse=True)
            assert client.reverse_scan(hi, lo, limit) == want_rev[:limit]
    # The default column family is a separate key space.
    assert RawClient(stubs).scan(b"", b"", 1000) == []


def test_scan_is_clipped_to_the_region(stubs: Stubs, cluster: MockCluster) -> None:
    client = RawClient(stubs, cf="lock")
    for k in (b"a1", b"c9", b"d0", b"e5"):
        client.put(k, k)
    first = cluster.region_by_key(b"")
    assert first is not None
    # No end key: only the first region's keys come back (client-rust relies on this).
    resp = stubs.tikv(first.leader_store_id).RawScan(
        kvrpcpb_pb2.RawScanRequest(context=context_for(first), limit=100, cf="lock")
    )
    assert [kv.key for kv in resp.kvs] == [b"a1", b"c9"]
    key_only = stubs.tikv(first.leader_store_id).RawScan(
        kvrpcpb_pb2.RawScanRequest(context=context_for(first), limit=1, key_only=True, cf="lock")
    )
    assert [(kv.key, kv.value) for kv in key_only.kvs] == [(b"a1", b"")]
    zero = stubs.tikv(first.leader_store_id).RawScan(
        kvrpcpb_pb2.RawScanRequest(context=context_for(first), limit=0, cf="lock")
    )
    assert list(zero.kvs) == []


def test_reverse_scan_bounds(stubs: Stubs, cluster: MockCluster) -> None:
    client = RawClient(stubs)
    for k in (b"e1", b"f1", b"g1", b"j9"):
        client.put(k, k)
    region = cluster.region_by_key(b"e")
    assert region is not None
    stub = stubs.tikv(region.leader_store_id)

    def rscan(start: bytes, end: bytes) -> list[bytes]:
        resp = stub.RawScan(
            kvrpcpb_pb2.RawScanRequest(
                context=context_for(region), start_key=start, end_key=end, limit=10, reverse=True
            )
        )
        assert not resp.HasField("region_error"), resp.region_error
        return [kv.key for kv in resp.kvs]

    # start_key is the exclusive upper bound, end_key the inclusive lower bound.
    assert rscan(b"g1", b"e1") == [b"f1", b"e1"]
    # The upper bound may be the region's end, and an empty lower bound means the region start.
    assert rscan(b"k", b"") == [b"j9", b"g1", b"f1", b"e1"]
    # A huge upper bound (tikv-python's open end) is fine in the last region only.
    bad = stub.RawScan(
        kvrpcpb_pb2.RawScanRequest(
            context=context_for(region), start_key=b"\xff" * 8193, limit=10, reverse=True
        )
    )
    assert bad.region_error.HasField("key_not_in_region")


def test_batch_scan_and_delete_range(stubs: Stubs, cluster: MockCluster) -> None:
    client = RawClient(stubs)
    for k in (b"s1", b"s2", b"s3", b"t1", b"t2", b"u1"):
        client.put(k, k)
    region = cluster.region_by_key(b"s")
    assert region is not None
    stub = stubs.tikv(region.leader_store_id)
    resp = stub.RawBatchScan(
        kvrpcpb_pb2.RawBatchScanRequest(
            context=context_for(region),
            ranges=[
                kvrpcpb_pb2.KeyRange(start_key=b"s", end_key=b"t"),
                kvrpcpb_pb2.KeyRange(start_key=b"t", end_key=b"u"),
            ],
            each_limit=2,
        )
    )
    assert [kv.key for kv in resp.kvs] == [b"s1", b"s2", b"t1", b"t2"]
    bad = stub.RawBatchScan(
        kvrpcpb_pb2.RawBatchScanRequest(
            context=context_for(region),
            ranges=[
                kvrpcpb_pb2.KeyRange(start_key=b"t", end_key=b"u"),
                kvrpcpb_pb2.KeyRange(start_key=b"s", end_key=b"t"),
            ],
            each_limit=2,
        )
    )
    assert bad.kvs[0].error.abort
    deleted = stub.RawDeleteRange(
        kvrpcpb_pb2.RawDeleteRangeRequest(context=context_for(region), start_key=b"s2")
    )
    assert not deleted.error
    assert client.scan(b"s", b"v", 10) == [(b"s1", b"s1")]


def test_cf_rules(stubs: Stubs) -> None:
    stub, ctx = stubs.route(b"cf")
    bad = stub.RawPut(kvrpcpb_pb2.RawPutRequest(context=ctx, key=b"cf", value=b"v", cf="nope"))
    assert bad.error == "invalid cf name: nope"
    stub.RawPut(kvrpcpb_pb2.RawPutRequest(context=ctx, key=b"cf", value=b"d", cf="default"))
    got = stub.RawGet(kvrpcpb_pb2.RawGetRequest(context=ctx, key=b"cf"))
    assert got.value == b"d"  # empty cf is "default"


def test_ttl_refused_without_ttl_storage(stubs: Stubs) -> None:
    stub, ctx = stubs.route(b"ttl")
    resp = stub.RawPut(kvrpcpb_pb2.RawPutRequest(context=ctx, key=b"ttl", value=b"v", ttl=5))
    assert resp.error == "ttl is not enabled, but get put request with ttl"
    ttl = stub.RawGetKeyTTL(kvrpcpb_pb2.RawGetKeyTTLRequest(context=ctx, key=b"ttl"))
    assert ttl.not_found


def test_cas(stubs: Stubs) -> None:
    stub, ctx = stubs.route(b"cas")

    def cas(**kw: object) -> kvrpcpb_pb2.RawCASResponse:
        return stub.RawCompareAndSwap(kvrpcpb_pb2.RawCASRequest(context=ctx, key=b"cas", **kw))  # type: ignore[arg-type]

    first = cas(value=b"1", previous_not_exist=True)
    assert first.succeed and first.previous_not_exist
    again = cas(value=b"2", previous_not_exist=True)
    assert not again.succeed and again.previous_value == b"1"
    wrong = cas(value=b"2", previous_value=b"0")
    assert not wrong.succeed and wrong.previous_value == b"1" and not wrong.previous_not_exist
    right = cas(value=b"2", previous_value=b"1")
    assert right.succeed and right.previous_value == b"1"
    gone = cas(previous_value=b"2", delete=True)
    assert gone.succeed
    assert stub.RawGet(kvrpcpb_pb2.RawGetRequest(context=ctx, key=b"cas")).not_found


def test_checksum_matches_an_independent_computation(stubs: Stubs, cluster: MockCluster) -> None:
    client = RawClient(stubs)
    pairs = {b"m1": b"x" * 10, b"m2": b"", b"m3": b"yz"}
    for k, v in pairs.items():
        client.put(k, v)
    stub, ctx = stubs.route(b"m")
    resp = stub.RawChecksum(
        kvrpcpb_pb2.RawChecksumRequest(
            context=ctx, ranges=[kvrpcpb_pb2.KeyRange(start_key=b"m", end_key=b"n")]
        )
    )
    want = 0
    for k, v in pairs.items():
        want ^= crc64_reference(k + v)
    assert resp.checksum == want
    assert resp.total_kvs == 3
    assert resp.total_bytes == sum(len(k) + len(v) for k, v in pairs.items())


def test_split_region_rpc(stubs: Stubs, cluster: MockCluster) -> None:
    region = cluster.region_by_key(b"x")
    assert region is not None
    resp = stubs.tikv(region.leader_store_id).SplitRegion(
        kvrpcpb_pb2.SplitRegionRequest(
            context=context_for(region), split_keys=[b"x5", b"x1"], is_raw_kv=True
        )
    )
    assert [r.start_key for r in resp.regions] == [b"r", b"x1", b"x5"]
    assert resp.regions[-1].id == region.id
    assert cluster.region_by_key(b"x3") is not None
    stale = stubs.tikv(region.leader_store_id).SplitRegion(
        kvrpcpb_pb2.SplitRegionRequest(
            context=context_for(region), split_keys=[b"y"], is_raw_kv=True
        )
    )
    assert stale.region_error.HasField("epoch_not_match")


def test_unsafe_destroy_range(stubs: Stubs, cluster: MockCluster) -> None:
    client = RawClient(stubs)
    for k in (b"uc", b"ud1", b"ud2", b"ue", b"ue\x00\x00\x00\x00\x00\x00\xfb"):
        client.put(k, k)
    (store_id,) = list(cluster.store_addresses)[:1]
    resp = stubs.tikv(store_id).UnsafeDestroyRange(
        kvrpcpb_pb2.UnsafeDestroyRangeRequest(start_key=b"ud", end_key=b"ue")
    )
    assert not resp.error
    # TiKV deletes between the memcomparable encodings of the bounds; plain (v1 raw) keys are
    # compared with those encoded bounds, so b"ue" itself (below encode(b"ue")) goes too.
    assert client.get(b"ud1") is None
    assert client.get(b"ue") is None
    assert client.get(b"uc") == b"uc"
    assert client.get(b"ue\x00\x00\x00\x00\x00\x00\xfb") is not None
    empty = stubs.tikv(store_id).UnsafeDestroyRange(
        kvrpcpb_pb2.UnsafeDestroyRangeRequest(start_key=b"", end_key=b"x")
    )
    assert empty.error


def test_ttl_expiry_follows_the_clock() -> None:
    with MockCluster(stores=1, api_version="V1TTL") as c, Stubs(c) as stubs:
        stub, ctx = stubs.route(b"k")
        stub.RawPut(kvrpcpb_pb2.RawPutRequest(context=ctx, key=b"k", value=b"v", ttl=10))
        stub.RawBatchPut(
            kvrpcpb_pb2.RawBatchPutRequest(
                context=ctx,
                pairs=[
                    kvrpcpb_pb2.KvPair(key=b"b1", value=b"1"),
                    kvrpcpb_pb2.KvPair(key=b"b2", value=b"2"),
                ],
                ttls=[20],
            )
        )
        stub.RawPut(kvrpcpb_pb2.RawPutRequest(context=ctx, key=b"forever", value=b"f"))
        c.clock.freeze()
        ttl = stub.RawGetKeyTTL(kvrpcpb_pb2.RawGetKeyTTLRequest(context=ctx, key=b"k"))
        assert 9 <= ttl.ttl <= 10
        assert (
            stub.RawGetKeyTTL(kvrpcpb_pb2.RawGetKeyTTLRequest(context=ctx, key=b"forever")).ttl == 0
        )
        # The checksum hashes the user value, not V1TTL's stored encoding (value + expire ts):
        # TiKV reads raw data through RawEncodeSnapshot, which strips the suffix.
        now_s = c.clock.now_s()
        cs = stub.RawChecksum(
            kvrpcpb_pb2.RawChecksumRequest(
                context=ctx, ranges=[kvrpcpb_pb2.KeyRange(start_key=b"f", end_key=b"g")]
            )
        )
        assert cs.checksum == crc64_reference(b"forever" + b"f")
        assert cs.total_bytes == len(b"forever") + 1
        c.clock.advance(11_000)
        assert stub.RawGet(kvrpcpb_pb2.RawGetRequest(context=ctx, key=b"k")).not_found
        assert stub.RawGet(kvrpcpb_pb2.RawGetRequest(context=ctx, key=b"b1")).value == b"1"
        c.clock.advance(10_000)
        scan = stub.RawScan(kvrpcpb_pb2.RawScanRequest(context=ctx, limit=10))
        assert [kv.key for kv in scan.kvs] == [b"forever"]
        assert now_s > 0
        mismatch = stub.RawBatchPut(
            kvrpcpb_pb2.RawBatchPutRequest(
                context=ctx,
                pairs=[
                    kvrpcpb_pb2.KvPair(key=b"a", value=b"1"),
                    kvrpcpb_pb2.KvPair(key=b"b", value=b"2"),
                ],
                ttls=[1, 2, 3],
            )
        )
        assert mismatch.error == "The length of ttls does not equal to the length of pairs"


def test_api_v2_key_modes() -> None:
    with MockCluster(stores=1, api_version=2) as c, Stubs(c) as stubs:
        region = c.regions()[0]
        v2 = context_for(region, api_version=kvrpcpb_pb2.V2)
        stub = stubs.tikv(region.leader_store_id)
        ok = stub.RawPut(kvrpcpb_pb2.RawPutRequest(context=v2, key=b"r\x00\x00\x00k", value=b"v"))
        assert not ok.error
        bad = stub.RawPut(kvrpcpb_pb2.RawPutRequest(context=v2, key=b"x\x00\x00\x00k", value=b"v"))
        assert bad.error.startswith("Key mode mismatched with the request mode")
        v1 = context_for(region)
        old = stub.RawGet(kvrpcpb_pb2.RawGetRequest(context=v1, key=b"r\x00\x00\x00k"))
        assert old.error.startswith("Api version in request does not match with TiKV storage")
        cf = stub.RawGet(kvrpcpb_pb2.RawGetRequest(context=v2, key=b"r\x00\x00\x00k", cf="write"))
        assert cf.error == "cf is deprecated in API V2, cf name: write"
        got = stub.RawGet(kvrpcpb_pb2.RawGetRequest(context=v2, key=b"r\x00\x00\x00k"))
        assert got.value == b"v"
        # Keyspace creation splits at the v2 bounds; region checks compare encoded keys.
        c.create_keyspace("ks1")
        ks_region = c.region_by_key(b"r\x00\x00\x01a", txn=True)
        assert ks_region is not None
        region = ks_region
        ctx = context_for(region, api_version=kvrpcpb_pb2.V2)
        inside = stubs.tikv(region.leader_store_id).RawPut(
            kvrpcpb_pb2.RawPutRequest(context=ctx, key=b"r\x00\x00\x01a", value=b"1")
        )
        assert not inside.HasField("region_error") and not inside.error
        outside = stubs.tikv(region.leader_store_id).RawPut(
            kvrpcpb_pb2.RawPutRequest(context=ctx, key=b"r\x00\x00\x00a", value=b"1")
        )
        assert outside.region_error.HasField("key_not_in_region")


def test_check_order_reads_vs_writes(stubs: Stubs, cluster: MockCluster) -> None:
    # TiKV checks a read's cf after taking the region snapshot, a write's cf before it.
    left = cluster.region_by_key(b"a")
    assert left is not None
    stub = stubs.tikv(left.leader_store_id)
    ctx = context_for(left)
    read = stub.RawGet(kvrpcpb_pb2.RawGetRequest(context=ctx, key=b"zz", cf="bad"))
    assert read.region_error.HasField("key_not_in_region")
    assert not read.error
    write = stub.RawPut(kvrpcpb_pb2.RawPutRequest(context=ctx, key=b"zz", value=b"v", cf="bad"))
    assert write.error == "invalid cf name: bad"
    assert not write.HasField("region_error")
    # raw_put checks the TTL before the cf.
    ttl = stub.RawPut(kvrpcpb_pb2.RawPutRequest(context=ctx, key=b"a", value=b"v", cf="bad", ttl=3))
    assert ttl.error == "ttl is not enabled, but get put request with ttl"


def test_split_region_checks_conf_ver(stubs: Stubs, cluster: MockCluster) -> None:
    region = cluster.region_by_key(b"e")
    assert region is not None
    ctx = context_for(region)
    ctx.region_epoch.conf_ver += 1
    resp = stubs.tikv(region.leader_store_id).SplitRegion(
        kvrpcpb_pb2.SplitRegionRequest(context=ctx, split_keys=[b"e5"], is_raw_kv=True)
    )
    assert resp.region_error.epoch_not_match.current_regions[0].id == region.id
    assert cluster.region_by_key(b"e5") == region
