"""Tests of the protocol schema: gRPC paths, round trips and hand-derived wire encodings."""

from __future__ import annotations

import importlib
from collections.abc import Callable
from typing import Any

import pytest
from google.protobuf import descriptor
from tikv_proto import (
    coprocessor_pb2,
    deadlock_pb2,
    deadlock_pb2_grpc,
    errorpb_pb2,
    keyspacepb_pb2,
    keyspacepb_pb2_grpc,
    kvrpcpb_pb2,
    metapb_pb2,
    pdpb_pb2,
    pdpb_pb2_grpc,
    tikvpb_pb2,
    tikvpb_pb2_grpc,
)

PACKAGES = [
    "apipb",
    "coprocessor",
    "deadlock",
    "errorpb",
    "keyspacepb",
    "kvrpcpb",
    "metapb",
    "pdpb",
    "resource_manager",
    "tikvpb",
    "tracepb",
]

# The methods the clients and the mock store rely on, with their streaming kind, written out
# by hand from the list (not derived from the generated code they check).
UNARY, BIDI, SERVER_STREAM = "unary_unary", "stream_stream", "unary_stream"
TIKV_UNARY = """
    KvGet KvScan KvPrewrite KvPessimisticLock KVPessimisticRollback KvTxnHeartBeat
    KvCheckTxnStatus KvCheckSecondaryLocks KvCommit KvCleanup KvBatchGet KvBatchRollback
    KvScanLock KvResolveLock KvGC KvDeleteRange KvFlush KvBufferBatchGet
    RawGet RawBatchGet RawPut RawBatchPut RawDelete RawBatchDelete RawScan RawDeleteRange
    RawBatchScan RawGetKeyTTL RawCompareAndSwap RawChecksum SplitRegion UnsafeDestroyRange
"""
PD_UNARY = """
    GetMembers GetRegion GetPrevRegion GetRegionByID ScanRegions BatchScanRegions GetStore
    GetAllStores GetClusterInfo IsBootstrapped AllocID GetGCSafePoint UpdateGCSafePoint
    UpdateServiceGCSafePoint GetMinTS
"""
TIKV_METHODS = {
    **dict.fromkeys(TIKV_UNARY.split(), UNARY),
    "BatchCommands": BIDI,
    "CoprocessorStream": SERVER_STREAM,
}
PD_METHODS = {**dict.fromkeys(PD_UNARY.split(), UNARY), "Tso": BIDI}
KEYSPACE_METHODS = {"LoadKeyspace": UNARY, "WatchKeyspaces": SERVER_STREAM}
DEADLOCK_METHODS = {"Detect": BIDI, "GetWaitForEntries": UNARY}


class RecordingChannel:
    """A stand-in channel that records which path each stub method was bound to, and how."""

    def __init__(self) -> None:
        self.paths: dict[str, str] = {}

    def _factory(self, kind: str) -> Callable[..., object]:
        def bind(path: str, **_: Any) -> object:
            self.paths[path] = kind
            return object()

        return bind

    def __getattr__(self, kind: str) -> Callable[..., object]:
        if kind in (UNARY, BIDI, SERVER_STREAM, "stream_unary"):
            return self._factory(kind)
        raise AttributeError(kind)


@pytest.mark.parametrize(
    ("stub", "service", "expected"),
    [
        (tikvpb_pb2_grpc.TikvStub, "tikvpb.Tikv", TIKV_METHODS),
        (pdpb_pb2_grpc.PDStub, "pdpb.PD", PD_METHODS),
        (keyspacepb_pb2_grpc.KeyspaceStub, "keyspacepb.Keyspace", KEYSPACE_METHODS),
        (deadlock_pb2_grpc.DeadlockStub, "deadlock.Deadlock", DEADLOCK_METHODS),
    ],
)
def test_stub_paths_match_the_wire(stub: Any, service: str, expected: dict[str, str]) -> None:
    channel = RecordingChannel()
    stub(channel)
    for method, kind in expected.items():
        path = f"/{service}/{method}"
        assert channel.paths.get(path) == kind, f"{path}: bound as {channel.paths.get(path)}"
    # Every bound path is /<package>.<Service>/<Method> of a method the descriptor declares.
    pkg, _, name = service.partition(".")
    module = importlib.import_module(f"tikv_proto.{pkg}_pb2")
    declared = module.DESCRIPTOR.services_by_name[name]
    assert set(channel.paths) == {f"/{service}/{m.name}" for m in declared.methods}


def test_enough_of_the_services_is_declared() -> None:
    tikv = tikvpb_pb2.DESCRIPTOR.services_by_name["Tikv"]
    pd = pdpb_pb2.DESCRIPTOR.services_by_name["PD"]
    assert len(tikv.methods) >= 45
    assert len(pd.methods) >= 20


def test_pessimistic_rollback_keeps_upstream_spelling() -> None:
    tikv = tikvpb_pb2.DESCRIPTOR.services_by_name["Tikv"]
    assert "KVPessimisticRollback" in tikv.methods_by_name
    assert "KvPessimisticRollback" not in tikv.methods_by_name


@pytest.mark.parametrize("package", PACKAGES)
def test_each_package_imports_under_its_upstream_proto_package(package: str) -> None:
    module = importlib.import_module(f"tikv_proto.{package}_pb2")
    assert module.DESCRIPTOR.package == package


def _round_trip(message: Any) -> None:
    data = message.SerializeToString()
    again = type(message).FromString(data)
    assert again == message
    assert again.SerializeToString() == data


def test_round_trip_one_message_of_each_package() -> None:
    epoch = metapb_pb2.RegionEpoch(conf_ver=5, version=9)
    region = metapb_pb2.Region(
        id=2,
        start_key=b"a",
        end_key=b"m",
        region_epoch=epoch,
        peers=[metapb_pb2.Peer(id=3, store_id=1), metapb_pb2.Peer(id=4, store_id=2)],
    )
    messages: list[Any] = [
        region,
        kvrpcpb_pb2.PrewriteRequest(
            context=kvrpcpb_pb2.Context(region_id=2, region_epoch=epoch),
            mutations=[kvrpcpb_pb2.Mutation(op=kvrpcpb_pb2.Op.Insert, key=b"k", value=b"v")],
            primary_lock=b"k",
            start_version=400,
            lock_ttl=3000,
            secondaries=[b"s1", b"s2"],
            use_async_commit=True,
            try_one_pc=False,
            max_commit_ts=500,
            pessimistic_actions=[
                kvrpcpb_pb2.PrewriteRequest.PessimisticAction.DO_PESSIMISTIC_CHECK
            ],
        ),
        errorpb_pb2.Error(
            message="epoch not match",
            epoch_not_match=errorpb_pb2.EpochNotMatch(current_regions=[region]),
        ),
        pdpb_pb2.TsoResponse(
            header=pdpb_pb2.ResponseHeader(cluster_id=42),
            count=3,
            timestamp=pdpb_pb2.Timestamp(physical=1_700_000_000_000, logical=17),
        ),
        tikvpb_pb2.BatchCommandsRequest(
            requests=[
                tikvpb_pb2.BatchCommandsRequest.Request(RawGet=kvrpcpb_pb2.RawGetRequest(key=b"x"))
            ],
            request_ids=[1],
        ),
        deadlock_pb2.DeadlockResponse(
            entry=deadlock_pb2.WaitForEntry(txn=1, wait_for_txn=2, key_hash=3, key=b"k"),
            deadlock_key_hash=3,
            wait_chain=[deadlock_pb2.WaitForEntry(txn=2, wait_for_txn=1, key=b"j")],
        ),
        keyspacepb_pb2.LoadKeyspaceResponse(
            keyspace=keyspacepb_pb2.KeyspaceMeta(id=7, name="tenant", config={"gc": "on"}),
        ),
        coprocessor_pb2.Request(
            tp=104,
            data=b"\x01",
            start_ts=9,
            ranges=[coprocessor_pb2.KeyRange(start=b"a", end=b"b")],
        ),
    ]
    for message in messages:
        _round_trip(message)


# fmt: off
# Golden encodings, derived by hand from the protobuf encoding rules: a tag byte is
# (field_number << 3) | wire_type (0 = varint, 2 = length-delimited), followed by a varint or a
# length and the bytes. They pin field numbers and types independently of the generated code.

def test_golden_get_request_with_context() -> None:
    request = kvrpcpb_pb2.GetRequest(
        context=kvrpcpb_pb2.Context(
            region_id=2,
            region_epoch=metapb_pb2.RegionEpoch(conf_ver=1, version=3),
            peer=metapb_pb2.Peer(id=4, store_id=1),
        ),
        key=b"k1",
        version=5,
    )
    context = bytes([
        0x08, 0x02,                                  # region_id (1) = 2
        0x12, 0x04, 0x08, 0x01, 0x10, 0x03,          # region_epoch (2) {conf_ver 1, version 3}
        0x1A, 0x04, 0x08, 0x04, 0x10, 0x01,          # peer (3) {id 4, store_id 1}
    ])
    expected = bytes([0x0A, len(context)]) + context + bytes([
        0x12, 0x02, ord("k"), ord("1"),              # key (2) = b"k1"
        0x18, 0x05,                                  # version (3) = 5
    ])
    assert request.SerializeToString() == expected


def test_golden_tso_request() -> None:
    request = pdpb_pb2.TsoRequest(header=pdpb_pb2.RequestHeader(cluster_id=7), count=3)
    # header (1) {cluster_id (1) = 7}, count (2) = 3
    assert request.SerializeToString() == bytes([0x0A, 0x02, 0x08, 0x07, 0x10, 0x03])


def test_golden_batch_commands_request() -> None:
    request = tikvpb_pb2.BatchCommandsRequest(
        requests=[tikvpb_pb2.BatchCommandsRequest.Request(RawGet=kvrpcpb_pb2.RawGetRequest(key=b"a"))],
        request_ids=[9, 300],
    )
    inner = bytes([0x6A, 0x03, 0x12, 0x01, ord("a")])  # RawGet (13) {key (2) = b"a"}
    expected = (
        bytes([0x0A, len(inner)]) + inner
        + bytes([0x12, 0x03, 0x09, 0xAC, 0x02])         # request_ids (2), packed: 9, 300
    )
    assert request.SerializeToString() == expected


def test_golden_mutation_and_large_timestamp() -> None:
    mutation = kvrpcpb_pb2.Mutation(op=kvrpcpb_pb2.Op.Del, key=b"a")
    assert mutation.SerializeToString() == bytes([0x08, 0x01, 0x12, 0x01, ord("a")])
    # A TSO-sized version: 2**62 is a 9-byte varint (62 bits / 7 per byte, rounded up).
    commit = kvrpcpb_pb2.CommitRequest(commit_version=1 << 62)
    assert commit.SerializeToString() == bytes([0x20]) + bytes([0x80] * 8) + bytes([0x40])


# fmt: on


def test_enum_numbers_are_the_protocols() -> None:
    assert kvrpcpb_pb2.Op.Value("PessimisticLock") == 5
    assert kvrpcpb_pb2.Action.Value("MinCommitTSPushed") == 3
    assert kvrpcpb_pb2.APIVersion.Value("V2") == 2
    assert metapb_pb2.StoreState.Value("Tombstone") == 2


def test_oneof_of_batch_commands_covers_every_unary_kv_and_raw_method() -> None:
    request_fields = {
        f.name
        for f in tikvpb_pb2.BatchCommandsRequest.Request.DESCRIPTOR.oneofs_by_name["cmd"].fields
    }
    response_fields = {
        f.name
        for f in tikvpb_pb2.BatchCommandsResponse.Response.DESCRIPTOR.oneofs_by_name["cmd"].fields
    }
    for name in (
        "Get",
        "Prewrite",
        "Commit",
        "PessimisticLock",
        "PessimisticRollback",
        "CheckTxnStatus",
        "CheckSecondaryLocks",
        "TxnHeartBeat",
        "Flush",
        "BufferBatchGet",
        "RawGet",
        "RawBatchPut",
        "RawScan",
        "RawBatchScan",
        "Empty",
    ):
        assert name in request_fields
        assert name in response_fields


def test_descriptor_field_types_of_the_hot_path() -> None:
    fields = kvrpcpb_pb2.Context.DESCRIPTOR.fields_by_name
    assert fields["region_id"].number == 1
    assert fields["region_id"].type == descriptor.FieldDescriptor.TYPE_UINT64
    assert fields["api_version"].number == 21
    assert fields["request_source"].number == 24
