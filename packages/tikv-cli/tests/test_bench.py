"""Benchmark harness pieces: a quick in-process cell, ``tikv bench``, the plan and the report."""

from __future__ import annotations

import json
import random
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from _cli_runner import Tikv
from tikv_cli.bench.harness import Plan, parse_args, plan_cells
from tikv_cli.bench.measure import WORKLOADS
from tikv_cli.bench.peer_runner import PEER_SUPPORT
from tikv_cli.bench.report import (
    committed_as,
    compare,
    markdown_report,
    protocol_gains,
    write_chart,
    write_json,
)
from tikv_cli.bench.runner import run_cell
from tikv_mockstore import MockCluster


@pytest.fixture(scope="module")
def bench_cluster() -> Iterator[MockCluster]:
    with MockCluster(stores=3, regions=4) as cluster:
        yield cluster


@pytest.mark.parametrize("client", ["ours-async", "ours-sync"])
def test_quick_cell_of_our_client(bench_cluster: MockCluster, client: str) -> None:
    result = run_cell(
        client,
        "raw_get",
        bench_cluster.pd_endpoints,
        concurrency=4,
        duration=0.3,
        warmup=0.1,
        preload=True,
    )
    # Every get found its preloaded key (a missing key counts as an error).
    assert result["errors"] == 0 and result["warmup_errors"] == 0, result["first_error"]
    assert result["ops"] > 0
    assert result["latency_ms"]["count"] == result["ops"]
    assert result["latency_ms"]["p50_ms"] <= result["latency_ms"]["p99_ms"]
    assert result["client_cpu_s"] > 0
    assert result["peak_rss_mb"] > 10


def test_quick_cell_bad_names(bench_cluster: MockCluster) -> None:
    with pytest.raises(ValueError, match="client must be one of"):
        run_cell("theirs", "raw_get", bench_cluster.pd_endpoints, concurrency=1, duration=0.1)
    with pytest.raises(ValueError, match="unknown workload"):
        run_cell("ours-async", "nope", bench_cluster.pd_endpoints, concurrency=1, duration=0.1)


def test_tikv_bench_json_against_pd(tikv: Tikv, bench_cluster: MockCluster) -> None:
    result = tikv(
        "bench",
        "raw_put",
        "tso",
        "--pd",
        bench_cluster.pd_endpoints[0],
        "--concurrency",
        "1,4",
        "--duration",
        "0.2",
        "--warmup",
        "0.05",
        "--json",
    )
    assert result.code == 0, result.err
    doc = json.loads(result.out)
    assert doc["protocol_gains"] == []  # no commit-protocol variant ran
    rows = doc["results"]
    assert [(r["workload"], r["concurrency"]) for r in rows] == [
        ("raw_put", 1),
        ("raw_put", 4),
        ("tso", 1),
        ("tso", 4),
    ]
    assert all(r["ops"] > 0 and r["errors"] == 0 and r["client"] == "ours-async" for r in rows)


@pytest.mark.parametrize("client", ["ours-async", "ours-sync"])
def test_small_transaction_variants_commit_with_the_protocol_they_ask_for(
    bench_cluster: MockCluster, client: str
) -> None:
    counts: dict[str, Any] = {}
    for workload in ("txn_small", "txn_small_1pc", "txn_small_async", "txn_pessimistic"):
        result = run_cell(
            client,
            workload,
            bench_cluster.pd_endpoints,
            concurrency=2,
            duration=0.2,
            warmup=0.0,
            preload=workload == "txn_small",
        )
        assert result["ops"] > 0 and result["errors"] == 0, result["first_error"]
        counts[workload] = result.get("commit_protocols")
    # Every write key of a small transaction shares one region of the 4: 1PC applies.
    assert counts["txn_small"]["2pc"] > 0
    assert counts["txn_small"]["1pc"] == counts["txn_small"]["async_commit"] == 0
    assert counts["txn_small_1pc"]["1pc"] > 0
    assert counts["txn_small_1pc"]["2pc"] == counts["txn_small_1pc"]["async_commit"] == 0
    assert counts["txn_small_async"]["async_commit"] > 0
    assert counts["txn_small_async"]["2pc"] == counts["txn_small_async"]["1pc"] == 0
    assert counts["txn_pessimistic"] is None  # not counted: it is not a variant


def test_tikv_bench_json_reports_protocol_gains(tikv: Tikv, bench_cluster: MockCluster) -> None:
    result = tikv(
        "bench",
        "txn_small",
        "txn_small_1pc",
        "txn_small_async",
        "--pd",
        bench_cluster.pd_endpoints[0],
        "--concurrency",
        "2",
        "--duration",
        "0.2",
        "--warmup",
        "0",
        "--json",
    )
    assert result.code == 0, result.err
    doc = json.loads(result.out)
    assert [r["workload"] for r in doc["results"]] == [
        "txn_small",
        "txn_small_1pc",
        "txn_small_async",
    ]
    gains = {g["workload"]: g for g in doc["protocol_gains"]}
    assert set(gains) == {"txn_small_1pc", "txn_small_async"}
    for name, protocol in (("txn_small_1pc", "1pc"), ("txn_small_async", "async_commit")):
        gain = gains[name]
        assert gain["protocol"] == protocol and gain["baseline"] == "txn_small"
        assert (gain["client"], gain["concurrency"]) == ("ours-async", 2)
        cells = {r["workload"]: r for r in doc["results"]}
        expected = cells[name]["ops_per_s"] / cells["txn_small"]["ops_per_s"]
        assert gain["ops_ratio"] == pytest.approx(expected)
        assert gain["commit_protocols"][protocol] > 0


def test_tikv_bench_table(tikv: Tikv, bench_cluster: MockCluster) -> None:
    result = tikv(
        "bench",
        "raw_get",
        "--pd",
        bench_cluster.pd_endpoints[0],
        "--duration",
        "0.2",
        "--concurrency",
        "2",
        "--client",
        "sync",
    )
    assert result.code == 0, result.err
    assert "raw_get" in result.out and "ours-sync" in result.out and "ops/s" in result.out


def _cell(
    workload: str, conc: int, client: str, ops_s: float, p99: float, cpu: float
) -> dict[str, Any]:
    return {
        "workload": workload,
        "concurrency": conc,
        "client": client,
        "ops": int(ops_s),
        "errors": 0,
        "ops_per_s": ops_s,
        "latency_ms": {"p50_ms": p99 / 2, "p99_ms": p99},
        "client_cpu_s_per_1k_ops": cpu,
        "peak_rss_mb": 50.0,
        "client_util": 0.5,
        "server_util": 0.9,
    }


RESULTS = [
    _cell("raw_get", 16, "ours-async", 9000.0, 2.0, 0.05),
    _cell("raw_get", 16, "ours-sync", 3000.0, 6.0, 0.1),
    _cell("raw_get", 16, "tikv-client", 3000.0, 8.0, 0.2),
    _cell("raw_get", 16, "tikv-python", 1500.0, 4.0, 0.1),
    _cell("tso", 16, "ours-async", 20000.0, 1.0, 0.01),
    {"workload": "tso", "concurrency": 16, "client": "tikv-python", "unsupported": "no API"},
    {"workload": "tso", "concurrency": 16, "client": "tikv-client", "error": "crashed | badly"},
]


def test_protocol_gains_pair_each_variant_with_its_base() -> None:
    results = [
        _cell("txn_small", 16, "ours-async", 400.0, 20.0, 2.0),
        {
            **_cell("txn_small_1pc", 16, "ours-async", 600.0, 10.0, 1.5),
            "commit_protocols": {"1pc": 900, "async_commit": 0, "2pc": 3},
        },
        _cell("txn_small_async", 16, "ours-async", 500.0, 16.0, 2.0),
        _cell("txn_small_1pc", 16, "ours-sync", 300.0, 30.0, 3.0),  # no sync baseline
        _cell("txn_small_async", 1, "ours-async", 50.0, 4.0, 2.0),  # no c=1 baseline
        {"workload": "txn_small_1pc", "concurrency": 1, "client": "ours-sync", "error": "x"},
        _cell("txn_pessimistic", 16, "ours-async", 300.0, 30.0, 3.0),  # not a variant
    ]
    gains = protocol_gains(results)
    assert [(g["workload"], g["client"], g["concurrency"]) for g in gains] == [
        ("txn_small_1pc", "ours-async", 16),
        ("txn_small_async", "ours-async", 16),
    ]
    one_pc, async_commit = gains
    assert one_pc["protocol"] == "1pc" and one_pc["baseline"] == "txn_small"
    assert one_pc["ops_ratio"] == pytest.approx(1.5)
    assert one_pc["p50_ratio"] == pytest.approx(0.5)
    assert one_pc["p99_ratio"] == pytest.approx(0.5)
    assert one_pc["cpu_ratio"] == pytest.approx(0.75)
    assert one_pc["commit_protocols"] == {"1pc": 900, "async_commit": 0, "2pc": 3}
    assert async_commit["protocol"] == "async_commit"
    assert async_commit["ops_ratio"] == pytest.approx(1.25)
    assert "commit_protocols" not in async_commit
    assert committed_as(one_pc["commit_protocols"]) == "1pc 900, 2pc 3"
    assert committed_as({"1pc": 0, "2pc": 0}) == "none"
    assert committed_as(None) == "—"
    text = markdown_report(results, meta={})
    assert "## Commit protocols: variant ÷ two-phase commit" in text
    assert (
        "| txn_small_1pc | txn_small | ours-async | 16 | 1.50× | 0.50× | 0.50× | 0.75× "
        "| 1pc 900, 2pc 3 |" in text
    )
    assert "| txn_small_async | txn_small | ours-async | 16 | 1.25× |" in text
    assert "## Commit protocols" not in markdown_report(RESULTS, meta={})


def test_workload_variants_and_data_sets() -> None:
    variants = {n: w for n, w in WORKLOADS.items() if w.variant_of is not None}
    assert {n: (w.variant_of, w.commit_protocol) for n, w in variants.items()} == {
        "txn_small_1pc": ("txn_small", "1pc"),
        "txn_small_async": ("txn_small", "async_commit"),
    }
    # The variants and the pessimistic workload read the small transaction's records.
    shared = {n for n, w in WORKLOADS.items() if w.data_set == "txn_small"}
    assert shared == {"txn_small", "txn_small_1pc", "txn_small_async", "txn_pessimistic"}
    assert WORKLOADS["raw_scan"].data_set == "raw"
    assert WORKLOADS["txn_contended"].data_set == "txn_contended"
    # tikv-client 0.0.4 has pessimistic transactions but no 1PC / async-commit option.
    assert "txn_pessimistic" in PEER_SUPPORT["tikv-client"]
    assert not set(variants) & PEER_SUPPORT["tikv-client"]


def test_compare_ratios() -> None:
    rows = {(r["ours"], r["peer"], r["workload"]): r for r in compare(RESULTS)}
    assert set(rows) == {
        ("ours-async", "tikv-client", "raw_get"),
        ("ours-async", "tikv-python", "raw_get"),
        ("ours-sync", "tikv-client", "raw_get"),
        ("ours-sync", "tikv-python", "raw_get"),
    }
    row = rows[("ours-async", "tikv-client", "raw_get")]
    assert row["ops_ratio"] == pytest.approx(3.0)
    assert row["p99_ratio"] == pytest.approx(0.25)
    assert row["cpu_ratio"] == pytest.approx(0.25)
    assert rows[("ours-sync", "tikv-python", "raw_get")]["ops_ratio"] == pytest.approx(2.0)


def test_markdown_report() -> None:
    text = markdown_report(
        RESULTS,
        meta={"window": "3 s"},
        capacity=[
            {
                "mode": "batch_get",
                "requests_per_s": 100000.0,
                "messages_per_s": 781.0,
                "in_flight": 1024,
                "server_util": 0.98,
                "client_util": 0.5,
                "errors": 0,
                "server_us_per_request": 9.8,
            },
            {"mode": "unary_get", "error": "boom"},
        ],
    )
    assert "- **window**: 3 s" in text
    assert "| raw_get | 16 | ours-async | 9,000.0 | 1.00 | 2.00 | 0.050 | 50.0 |" in text
    assert "| tso | 16 | tikv-python | no API |" in text
    assert "| tso | 16 | tikv-client | failed: crashed \\| badly |" in text
    assert "| raw_get | 16 | ours-async | tikv-client | 3.00× | 0.25× | 0.25× |" in text
    assert "| batch_get | 100,000.0 | 781.0 | 1024 | 0.98 | 0.50 | 0 | 9.80 |" in text
    assert "| unary_get | failed: boom |" in text


def test_write_json_and_chart(tmp_path: Path) -> None:
    write_json(tmp_path / "r.json", {"results": RESULTS})
    assert json.loads((tmp_path / "r.json").read_text())["results"] == RESULTS
    why = write_chart(tmp_path / "r.png", RESULTS)
    try:
        import matplotlib  # type: ignore[import-not-found, unused-ignore]  # noqa: F401
    except ImportError:
        assert why == "matplotlib is not installed"
        assert not (tmp_path / "r.png").exists()
    else:
        assert why is None
        assert (tmp_path / "r.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert write_chart(tmp_path / "none.png", RESULTS[5:]) in (
        "no measured cells",
        "matplotlib is not installed",
    )


def test_plan_skips_what_peers_cannot_run() -> None:
    plan = Plan(
        workloads=["raw_get", "tso", "txn_large"],
        clients=["ours-async", "tikv-client", "tikv-python"],
        duration=1.0,
        warmup=None,
    )
    cells = plan_cells(plan)
    assert cells[:3] == [
        ("raw_get", 1, "ours-async"),
        ("raw_get", 1, "tikv-client"),
        ("raw_get", 1, "tikv-python"),
    ]
    assert ("tso", 16, "tikv-client") in cells
    assert not any(c[2] == "tikv-python" and c[0] != "raw_get" for c in cells)
    assert [c for c in cells if c[0] == "txn_large"] == [
        ("txn_large", 1, "ours-async"),
        ("txn_large", 1, "tikv-client"),
    ]
    skipped = {(s["workload"], s["concurrency"]) for s in plan.skipped}
    assert skipped == {("tso", 1), ("tso", 16), ("tso", 128), ("txn_large", 1)}
    assert all(s["client"] == "tikv-python" for s in plan.skipped)


def test_harness_arguments() -> None:
    args = parse_args(["--quick", "--workloads", "raw_get,tso", "--clients", "ours-async"])
    assert args.quick and args.workload_list == ["raw_get", "tso"]
    assert args.client_list == ["ours-async"]
    with pytest.raises(SystemExit):
        parse_args(["--workloads", "raw_get,nope"])
    with pytest.raises(SystemExit):
        parse_args(["--clients", "etcd"])
    with pytest.raises(SystemExit):
        parse_args(["--concurrency", "1,x"])


def test_transactional_keys_live_in_the_clients_namespace() -> None:
    from tikv_cli.bench import measure

    plain = measure.txn_key(7), measure.hot_key(3)
    try:
        measure.set_namespace("tikv-client")
        assert measure.txn_key(7) == b"tikv-client/" + plain[0]
        assert measure.hot_key(3) == b"tikv-client/" + plain[1]
        assert measure.txn_write_key(random.Random(1)).startswith(b"tikv-client/txn/w/")
        with pytest.raises(ValueError, match="client name"):
            measure.set_namespace("a/b")
    finally:
        measure.set_namespace("")
    assert (measure.txn_key(7), measure.hot_key(3)) == plain
    # Raw keys are shared: raw workloads leave no locks.
    assert measure.raw_key(1) == b"user00000001"
