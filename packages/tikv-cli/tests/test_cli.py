"""The ``tikv`` command: usage errors (exit 2) and one-shot commands against a MockCluster."""

from __future__ import annotations

import socket
import time

import pytest
from _cli_runner import Outcome, Tikv
from tikv_mockstore import MockCluster
from tikv_txn import GCTooEarlyError, TransactionClient


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["raw", "get", "k"], "--pd HOST:PORT is required"),
        (["txn", "put", "k", "v"], "--pd HOST:PORT is required"),
        (["shell"], "--pd HOST:PORT is required"),
        (["raw", "get", "k", "--pd", "nohost"], "must be host:port"),
        (["raw", "get", "k", "--pd", "h:0"], "invalid port"),
        (["raw", "get", "zz", "--hex", "--pd", "127.0.0.1:1"], "key 'zz' is not valid hex"),
        (["raw", "put", "6b", "x", "--hex", "--pd", "127.0.0.1:1"], "value 'x' is not valid hex"),
        (["raw", "put", "k"], "the following arguments are required: VALUE"),
        (["raw", "frob"], "invalid choice: 'frob'"),
        (["raw", "scan", "--limit", "0", "--pd", "h:1"], "must be at least 1"),
        (["raw", "put", "k", "v", "--ttl", "-3", "--pd", "h:1"], "TTL must be at least 1"),
        (["raw", "cas", "k", "new", "--pd", "h:1"], "one of the arguments"),
        (["raw", "get", "k", "--api-version", "3"], "must be 1 or 2"),
        (["bench", "nope"], "unknown workload 'nope'"),
        (["bench", "raw_get", "--concurrency", "0"], "concurrency must be in"),
        (["bench", "raw_get", "--concurrency", "a,b"], "invalid concurrency"),
        (["bench", "raw_get", "--duration", "-1"], "duration must be in"),
        (["cluster", "start", "--stores", "0"], "--stores must be at least 1"),
        (["cluster", "start", "--regions", "300"], "--regions must be in [1, 256]"),
        (["cluster", "start", "--pd-port", "70000"], "--pd-port must be in"),
        (["cluster", "start", "--api-version", "9"], "--api-version must be"),
        ([], "required: COMMAND"),
    ],
)
def test_usage_errors_exit_2_with_a_message(tikv: Tikv, argv: list[str], message: str) -> None:
    result = tikv(*argv)
    assert result.code == 2, result
    assert message in result.err
    assert "Traceback" not in result.err


def test_unreachable_pd_exits_3(tikv: Tikv) -> None:
    result = tikv("raw", "get", "k", "--pd", f"127.0.0.1:{_closed_port()}", "--timeout", "0.5")
    assert result.code == 3
    assert result.err.startswith("tikv: cannot reach PD")


def test_raw_one_shot_commands(tikv: Tikv, raw_cluster: MockCluster) -> None:
    pd = ["--pd", ",".join(raw_cluster.pd_endpoints)]
    assert tikv("raw", "put", "fruit/apple", "red", *pd).out == "OK\n"
    assert tikv("raw", "put", "fruit/kiwi", "green", "--ttl", "60", *pd).code == 0
    assert tikv("raw", "put", "fruit/plum", "purple", *pd).code == 0
    got = tikv("raw", "get", "fruit/apple", *pd)
    assert (got.code, got.out) == (0, "red\n")
    missing = tikv("raw", "get", "fruit/none", *pd)
    assert (missing.code, missing.out, missing.err) == (1, "", "(not found)\n")
    scan = tikv("raw", "scan", "fruit/", "fruit0", *pd)
    assert scan.out == "fruit/apple\tred\nfruit/kiwi\tgreen\nfruit/plum\tpurple\n"
    reverse = tikv("raw", "scan", "fruit/", "fruit0", "--reverse", "--limit", "2", *pd)
    assert reverse.out == "fruit/plum\tpurple\nfruit/kiwi\tgreen\n"
    keys = tikv("raw", "scan", "fruit/", "fruit0", "--keys-only", *pd)
    assert keys.out == "fruit/apple\nfruit/kiwi\nfruit/plum\n"
    ttl = tikv("raw", "ttl", "fruit/kiwi", *pd)
    assert ttl.code == 0 and 0 < int(ttl.out) <= 60
    assert tikv("raw", "ttl", "fruit/apple", *pd).out == "0 (no TTL)\n"
    assert tikv("raw", "ttl", "fruit/none", *pd).code == 1
    checksum = tikv("raw", "checksum", "fruit/", "fruit0", *pd)
    assert "total_kvs\t3\n" in checksum.out
    assert f"total_bytes\t{len(b'fruit/applered') + len(b'fruit/kiwigreen') + 16}\n" in checksum.out
    assert tikv("raw", "delete", "fruit/apple", *pd).code == 0
    assert tikv("raw", "get", "fruit/apple", *pd).code == 1
    assert tikv("raw", "delete-range", "fruit/", "fruit0", *pd).code == 0
    assert tikv("raw", "scan", "fruit/", "fruit0", *pd).out == ""


def test_raw_hex_and_cas(tikv: Tikv, raw_cluster: MockCluster) -> None:
    pd = ["--pd", raw_cluster.pd_endpoints[0]]
    assert tikv("raw", "put", "00ff01", "deadbeef", "--hex", *pd).code == 0
    assert tikv("raw", "get", "00ff01", "--hex", *pd).out == "deadbeef\n"
    first = tikv("raw", "cas", "counter", "1", "--expect-absent", *pd)
    assert (first.code, first.out) == (0, "swapped; previous value: (absent)\n")
    second = tikv("raw", "cas", "counter", "2", "--expected", "7", *pd)
    assert (second.code, second.out) == (1, "not swapped; previous value: 1\n")
    third = tikv("raw", "cas", "counter", "2", "--expected", "1", *pd)
    assert third.code == 0
    assert tikv("raw", "get", "counter", *pd).out == "2\n"


def test_ttl_refused_by_cluster_exits_3(tikv: Tikv, txn_cluster: MockCluster) -> None:
    # API v1 without TTL support refuses a TTL, as TiKV does: a readable failure, not a crash.
    result = tikv("raw", "put", "k", "v", "--ttl", "5", "--pd", txn_cluster.pd_endpoints[0])
    assert result.code == 3
    assert result.err.startswith("tikv: ")
    assert "ttl" in result.err.lower()


def test_txn_one_shot_commands(tikv: Tikv, txn_cluster: MockCluster) -> None:
    pd = ["--pd", txn_cluster.pd_endpoints[0]]
    put = tikv("txn", "put", "acct/alice", "100", *pd)
    assert put.code == 0 and put.out.startswith("OK (committed at ")
    assert tikv("txn", "put", "acct/bob", "50", *pd).code == 0
    assert tikv("txn", "get", "acct/alice", *pd).out == "100\n"
    assert tikv("txn", "scan", "acct/", "acct0", *pd).out == "acct/alice\t100\nacct/bob\t50\n"
    assert tikv("txn", "delete", "acct/bob", *pd).code == 0
    gone = tikv("txn", "get", "acct/bob", *pd)
    assert (gone.code, gone.err) == (1, "(not found)\n")


def test_txn_unreachable_pd_honours_timeout(tikv: Tikv) -> None:
    result = tikv("txn", "get", "k", "--pd", f"127.0.0.1:{_closed_port()}", "--timeout", "0.5")
    assert result.code == 3
    assert result.err.startswith("tikv: cannot reach PD")


def _commit_ts(outcome: Outcome) -> int:
    assert outcome.code == 0, outcome
    prefix = "OK (committed at "
    assert outcome.out.startswith(prefix), outcome.out
    return int(outcome.out.removeprefix(prefix).split(")")[0])


def test_txn_scan_options_and_delete_range(tikv: Tikv, txn_cluster: MockCluster) -> None:
    pd = ["--pd", txn_cluster.pd_endpoints[0]]
    for name, value in (("a", "1"), ("b", "2"), ("c", "3")):
        assert tikv("txn", "put", f"range/{name}", value, *pd).code == 0
    reverse = tikv("txn", "scan", "range/", "range0", "--reverse", "--limit", "2", *pd)
    assert reverse.out == "range/c\t3\nrange/b\t2\n"
    keys = tikv("txn", "scan", "range/", "range0", "--keys-only", *pd)
    assert keys.out == "range/a\nrange/b\nrange/c\n"
    bad = tikv("txn", "delete-range", "range0", "range/", *pd)
    assert (bad.code, bad.err) == (2, "tikv: error: delete-range: END must be greater than START\n")
    deleted = tikv("txn", "delete-range", "range/b", "range0", *pd)
    assert deleted.code == 0 and deleted.out.startswith("OK (") and "region" in deleted.out
    assert tikv("txn", "scan", "range/", "range0", *pd).out == "range/a\t1\n"


def test_txn_stale_reads(tikv: Tikv, txn_cluster: MockCluster) -> None:
    pd = ["--pd", txn_cluster.pd_endpoints[0]]
    assert tikv("txn", "put", "stale/k", "v1", *pd).code == 0
    assert tikv("txn", "get", "stale/k", *pd).out == "v1\n"
    # An hour ago the key did not exist: the stale read does not see the new write.
    old = tikv("txn", "get", "stale/k", "--stale", "3600", *pd)
    assert old.code == 1 and old.err.startswith("(not found at ts ")
    assert tikv("txn", "scan", "stale/", "stale0", "--stale", "3600", *pd).out == ""
    # A short staleness catches up with the write once the write is that old.
    deadline = time.monotonic() + 20
    while True:
        recent = tikv("txn", "get", "stale/k", "--stale", "0.2", *pd)
        if recent.code == 0 or time.monotonic() > deadline:
            break
        time.sleep(0.05)
    assert (recent.code, recent.out) == (0, "v1\n")
    scan = tikv("txn", "scan", "stale/", "stale0", "--stale", "0.2", *pd)
    assert scan.out == "stale/k\tv1\n"
    assert tikv("txn", "get", "k", "--stale", "0", *pd).code == 2


def test_txn_gc(tikv: Tikv) -> None:
    # A cluster of its own: GC moves its safepoint, which older reads elsewhere would hit.
    with MockCluster(stores=1, regions=2) as cluster:
        pd = ["--pd", cluster.pd_endpoints[0]]
        first = _commit_ts(tikv("txn", "put", "gc/k", "v1", *pd))
        second = _commit_ts(tikv("txn", "put", "gc/k", "v2", *pd))
        result = tikv("txn", "gc", str(second), *pd)
        assert result.code == 0, result
        assert result.out.startswith(f"GC safepoint: {second} (")
        with TransactionClient.connect(cluster.pd_endpoints) as client:
            assert client.gc_safe_point() == second
            with pytest.raises(GCTooEarlyError):
                client.snapshot(first).get(b"gc/k")
        assert tikv("txn", "get", "gc/k", *pd).out == "v2\n"
        # The safepoint never moves back: asking for an older one leaves it where it is.
        again = tikv("txn", "gc", str(first), *pd)
        assert again.code == 0 and again.out.startswith(f"GC safepoint: {second} (")
        future = tikv("txn", "gc", str(1 << 62), *pd)
        assert future.code == 2 and "is in the future" in future.err
        assert tikv("txn", "gc", "soon", *pd).code == 2
