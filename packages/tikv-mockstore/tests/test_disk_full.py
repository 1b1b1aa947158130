"""A store's disk usage: raftstore refuses proposals on a (nearly) full leader."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from tikv_mockstore import MockCluster
from tikv_mockstore.testing import Stubs
from tikv_proto import kvrpcpb_pb2


@pytest.fixture(scope="module")
def cluster() -> Iterator[MockCluster]:
    with MockCluster(stores=1, api_version="V1TTL") as mock:
        yield mock


def put(stubs: Stubs, key: bytes, opt: int) -> kvrpcpb_pb2.RawPutResponse:
    stub, ctx = stubs.route(key)
    ctx.disk_full_opt = opt  # type: ignore[assignment]
    response: kvrpcpb_pb2.RawPutResponse = stub.RawPut(
        kvrpcpb_pb2.RawPutRequest(context=ctx, key=key, value=b"v"), timeout=10
    )
    return response


def get(stubs: Stubs, key: bytes) -> kvrpcpb_pb2.RawGetResponse:
    stub, ctx = stubs.route(key)
    response: kvrpcpb_pb2.RawGetResponse = stub.RawGet(
        kvrpcpb_pb2.RawGetRequest(context=ctx, key=key), timeout=10
    )
    return response


@pytest.mark.parametrize(
    ("usage", "opt", "refused"),
    [
        ("normal", kvrpcpb_pb2.NotAllowedOnFull, False),
        ("almost_full", kvrpcpb_pb2.NotAllowedOnFull, True),
        ("almost_full", kvrpcpb_pb2.AllowedOnAlmostFull, False),
        ("almost_full", kvrpcpb_pb2.AllowedOnAlreadyFull, False),
        ("already_full", kvrpcpb_pb2.AllowedOnAlmostFull, True),
        ("already_full", kvrpcpb_pb2.AllowedOnAlreadyFull, True),
    ],
)
def test_writes_follow_the_leaders_disk_usage_and_the_requests_option(
    cluster: MockCluster, usage: str, opt: int, refused: bool
) -> None:
    key = f"disk-{usage}-{opt}".encode()
    cluster.set_disk_usage(1, usage)
    try:
        with Stubs(cluster) as stubs:
            response = put(stubs, key, opt)
            if refused:
                err = response.region_error
                assert list(err.disk_full.store_id) == [1]
                assert usage.replace("_", " ") in err.disk_full.reason
                assert "disk full" in err.message
            else:
                assert not response.HasField("region_error")
                assert not response.error
            # Reads are served whatever the disk usage.
            answer = get(stubs, key)
            assert not answer.HasField("region_error")
            assert (answer.not_found, answer.value) == ((True, b"") if refused else (False, b"v"))
    finally:
        cluster.set_disk_usage(1, "normal")


def test_disk_usage_is_validated(cluster: MockCluster) -> None:
    with pytest.raises(ValueError, match="almost_full"):
        cluster.set_disk_usage(1, "full")
    with pytest.raises(Exception, match="store 9"):
        cluster.set_disk_usage(9, "normal")
