"""Per-protocol commit counters (client-go ``1pc_test.go`` TestTxnCommitCounter).

client-go counts every finished commit in ``commit_txn_counter`` (2PC),
``async_commit_txn_counter`` or ``one_pc_txn_counter`` with ``ok`` / ``err`` by the
protocol still in use when the commit ended (``2pc.go`` execute). The counts are read
from a private prometheus registry as differences, as client-go's test subtracts its
initial ``TxnCommitCounter``.
"""

from __future__ import annotations

import itertools
from collections.abc import AsyncIterator, Iterator
from typing import Any

import grpc
import pytest
from tikv_mockstore import MockCluster
from tikv_pd.config import TransactionOptions
from tikv_txn import AsyncTransactionClient, UndeterminedError, WriteConflictError

prometheus_client = pytest.importorskip("prometheus_client")

from tikv_pd.metrics import disable_metrics, enable_metrics  # noqa: E402

_ids = itertools.count()
FAMILIES = {
    "2pc": "tikv_client_go_commit_txn_counter_total",
    "async_commit": "tikv_client_go_async_commit_txn_counter_total",
    "1pc": "tikv_client_go_one_pc_txn_counter_total",
}


@pytest.fixture(scope="module")
def cluster() -> Iterator[MockCluster]:
    with MockCluster(stores=1, regions=2) as mock:
        yield mock


@pytest.fixture
def registry() -> Iterator[Any]:
    reg = prometheus_client.CollectorRegistry()
    enable_metrics(reg)
    yield reg
    disable_metrics()


@pytest.fixture
async def client(cluster: MockCluster, registry: Any) -> AsyncIterator[AsyncTransactionClient]:
    async with await AsyncTransactionClient.connect(cluster.pd_endpoints) as c:
        yield c


def counts(registry: Any, result: str = "ok") -> dict[str, float]:
    return {
        protocol: registry.get_sample_value(name, {"type": result}) or 0.0
        for protocol, name in FAMILIES.items()
    }


def key(name: str) -> bytes:
    return b"\x10counter%03d/%s" % (next(_ids), name.encode())


TWO_PC = TransactionOptions.optimistic()
ASYNC_COMMIT = TransactionOptions.optimistic(async_commit=True)
ONE_PC = TransactionOptions.optimistic(try_one_pc=True)


async def test_txn_commit_counter(client: AsyncTransactionClient, registry: Any) -> None:
    initial = counts(registry)
    for options, expected in (
        (TWO_PC, {"2pc": 1, "async_commit": 0, "1pc": 0}),
        (ASYNC_COMMIT, {"2pc": 1, "async_commit": 1, "1pc": 0}),
        (ONE_PC, {"2pc": 1, "async_commit": 1, "1pc": 1}),
    ):
        txn = await client.begin(options)
        txn.put(key("k"), b"v")
        await txn.commit()
        now = counts(registry)
        assert {p: now[p] - initial[p] for p in now} == expected
    assert counts(registry, "err") == {"2pc": 0, "async_commit": 0, "1pc": 0}


@pytest.mark.parametrize(
    ("options", "protocol"),
    [(TWO_PC, "2pc"), (ASYNC_COMMIT, "async_commit"), (ONE_PC, "1pc")],
    ids=["2pc", "async_commit", "1pc"],
)
async def test_a_failed_commit_counts_as_an_error_of_its_protocol(
    client: AsyncTransactionClient, registry: Any, options: TransactionOptions, protocol: str
) -> None:
    k = key("conflict")
    loser = await client.begin(options)
    loser.put(k, b"loser")
    async with client.begin() as winner:
        winner.put(k, b"winner")
    ok_before = counts(registry)
    with pytest.raises(WriteConflictError):
        await loser.commit()
    errors = counts(registry, "err")
    assert errors == {p: (1.0 if p == protocol else 0.0) for p in FAMILIES}
    assert counts(registry) == ok_before


async def test_one_pc_with_an_undetermined_result(
    client: AsyncTransactionClient, cluster: MockCluster, registry: Any
) -> None:
    # client-go TestFailWithUndeterminedResult: a 1PC prewrite *is* the commit, so one
    # whose answer is lost leaves the outcome unknown. This client resends it first (a
    # prewrite of its own lock or commit answers success), so the resend fails too here.
    k = key("undetermined")
    region = cluster.region_by_key(k, txn=True)
    assert region is not None
    lost = cluster.faults.add("KvPrewrite", region=region.id, times=1, drop_stream=True)
    refused = cluster.faults.add(
        "KvPrewrite", region=region.id, times=1, status=grpc.StatusCode.INVALID_ARGUMENT
    )
    try:
        txn = await client.begin(ONE_PC)
        txn.put(k, b"v")
        with pytest.raises(UndeterminedError):
            await txn.commit()
        assert (lost.hits, refused.hits) == (1, 1)
    finally:
        cluster.faults.remove(lost)
        cluster.faults.remove(refused)
    # client-go counts it as a failed 1PC commit.
    assert counts(registry, "err") == {"2pc": 0, "async_commit": 0, "1pc": 1}
