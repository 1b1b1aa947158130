"""Benchmark reports: ratios, Markdown tables, JSON and the chart (stdlib + matplotlib).

A run's results are a list of *cells* (dicts): ``client``, ``workload``, ``concurrency``
and either the figures of :meth:`tikv_cli.bench.measure.Window.result`, or
``unsupported`` / ``error`` with a reason.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from tikv_cli.bench.measure import WORKLOADS, ratio

__all__ = [
    "OURS",
    "PEERS",
    "committed_as",
    "compare",
    "markdown_report",
    "protocol_gains",
    "write_chart",
    "write_json",
]

#: This project's client flavours, as named in results.
OURS = ("ours-async", "ours-sync")
#: The third-party clients, as named in results.
PEERS = ("tikv-client", "tikv-python")


def _cells(results: Sequence[dict[str, Any]]) -> dict[tuple[str, int, str], dict[str, Any]]:
    return {(r["workload"], r["concurrency"], r["client"]): r for r in results}


def _measured(cell: dict[str, Any] | None) -> bool:
    return cell is not None and "ops_per_s" in cell and cell.get("ops", 0) > 0


def _latency(cell: dict[str, Any], name: str) -> float | None:
    lat = cell.get("latency_ms")
    return None if not lat else float(lat[name])


def compare(results: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """Ratios of each of our flavours to each peer, per workload and concurrency.

    Each row: ``workload``, ``concurrency``, ``ours``, ``peer``, ``ops_ratio`` (ours ÷ peer
    ops/s: above 1 means we are faster), ``p99_ratio`` (ours ÷ peer p99 latency: below 1 is
    better) and ``cpu_ratio`` (ours ÷ peer client CPU per operation: below 1 is better).
    Rows exist only where both cells were measured.
    """
    cells = _cells(results)
    rows: list[dict[str, Any]] = []
    keys = sorted({(w, c) for w, c, _ in cells}, key=lambda k: (_order(k[0]), k[1]))
    for workload, conc in keys:
        for ours in OURS:
            mine = cells.get((workload, conc, ours))
            if not _measured(mine):
                continue
            assert mine is not None
            for peer in PEERS:
                theirs = cells.get((workload, conc, peer))
                if not _measured(theirs):
                    continue
                assert theirs is not None
                rows.append(
                    {
                        "workload": workload,
                        "concurrency": conc,
                        "ours": ours,
                        "peer": peer,
                        "ops_ratio": ratio(mine["ops_per_s"], theirs["ops_per_s"]),
                        "p99_ratio": ratio(_latency(mine, "p99_ms"), _latency(theirs, "p99_ms")),
                        "cpu_ratio": ratio(
                            mine.get("client_cpu_s_per_1k_ops"),
                            theirs.get("client_cpu_s_per_1k_ops"),
                        ),
                    }
                )
    return rows


def protocol_gains(results: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """The gain of each commit-protocol variant over the workload it varies.

    ``results`` are cells, as :func:`compare` takes. For every variant cell (a workload
    with ``variant_of``) whose base cell of the same client and concurrency was measured
    too, one row: ``client``,
    ``concurrency``, ``workload``, ``protocol``, ``baseline``, ``ops_ratio`` (variant ÷
    base ops/s: above 1 is a gain), ``p50_ratio`` / ``p99_ratio`` (variant ÷ base
    latency: below 1 is a gain) and ``cpu_ratio`` (client CPU per operation), plus the
    variant cell's ``commit_protocols`` (how its transactions actually committed) when the
    runner counted them.
    """
    cells = _cells(results)
    rows: list[dict[str, Any]] = []
    for cell in results:
        spec = WORKLOADS.get(cell["workload"])
        if spec is None or spec.variant_of is None or not _measured(cell):
            continue
        base = cells.get((spec.variant_of, cell["concurrency"], cell["client"]))
        if not _measured(base):
            continue
        assert base is not None
        rows.append(
            {
                "client": cell["client"],
                "concurrency": cell["concurrency"],
                "workload": spec.name,
                "protocol": spec.commit_protocol,
                "baseline": spec.variant_of,
                "ops_ratio": ratio(cell["ops_per_s"], base["ops_per_s"]),
                "p50_ratio": ratio(_latency(cell, "p50_ms"), _latency(base, "p50_ms")),
                "p99_ratio": ratio(_latency(cell, "p99_ms"), _latency(base, "p99_ms")),
                "cpu_ratio": ratio(
                    cell.get("client_cpu_s_per_1k_ops"), base.get("client_cpu_s_per_1k_ops")
                ),
                **(
                    {"commit_protocols": cell["commit_protocols"]}
                    if "commit_protocols" in cell
                    else {}
                ),
            }
        )
    rows.sort(key=lambda r: (_order(r["workload"]), r["concurrency"], _client_order(r["client"])))
    return rows


def committed_as(counts: dict[str, int] | None) -> str:
    """How a cell's transactions committed, e.g. ``1pc 1,200, 2pc 3`` (``—``: not counted)."""
    if counts is None:
        return "—"
    return ", ".join(f"{name} {count:,}" for name, count in counts.items() if count) or "none"


def _order(workload: str) -> int:
    names = list(WORKLOADS)
    return names.index(workload) if workload in names else len(names)


def _num(value: Any, digits: int = 1) -> str:
    if value is None:
        return "—"
    if 0 < abs(value) < 10 and digits < 2:
        digits = 3  # e.g. 0.213 ops/s of a large transaction
    return f"{value:,.{digits}f}"


def _x(value: float | None) -> str:
    return "—" if value is None else f"{value:.2f}×"


def markdown_report(
    results: Sequence[dict[str, Any]],
    *,
    meta: dict[str, Any],
    capacity: Sequence[dict[str, Any]] = (),
) -> str:
    """The run as Markdown: setup, results per cell, ratios, mock capacity."""
    lines = ["# Benchmark results", ""]
    for key, value in meta.items():
        lines.append(f"- **{key}**: {value}")
    lines += [
        "",
        "Every client runs in its own process, the embedded cluster in another; client CPU is",
        "`getrusage` of the client process over the window (user + system), util = CPU s per",
        "wall s. A Python mock serves about as slowly per message as a Python client sends, so",
        "read the server util column: near 1.0 the mock, not the client, is the limit.",
        "",
        "## Results",
        "",
        "| workload | conc. | client | ops/s | p50 ms | p99 ms | client CPU s / 1k ops "
        "| peak RSS MB | client util | server util | errors |",
        "|---|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for cell in sorted(
        results,
        key=lambda r: (_order(r["workload"]), r["concurrency"], _client_order(r["client"])),
    ):
        head = f"| {cell['workload']} | {cell['concurrency']} | {cell['client']} |"
        if "unsupported" in cell or "error" in cell:
            reason = cell.get("unsupported") or f"failed: {cell.get('error')}"
            reason = str(reason).replace("|", "\\|").replace("\n", " ")[:160]
            lines.append(f"{head} {reason} | | | | | | | |")
            continue
        lat = cell.get("latency_ms") or {}
        errors = str(cell.get("errors", 0))
        if cell.get("aborted"):
            errors += f" (aborted: {cell['aborted']})"
        lines.append(
            f"{head} {_num(cell['ops_per_s'])} | {_num(lat.get('p50_ms'), 2)} "
            f"| {_num(lat.get('p99_ms'), 2)} | {_num(cell.get('client_cpu_s_per_1k_ops'), 3)} "
            f"| {_num(cell.get('peak_rss_mb'))} | {_num(cell.get('client_util'), 2)} "
            f"| {_num(cell.get('server_util'), 2)} | {errors} |"
        )
    rows = compare(results)
    lines += [
        "",
        "## Ours ÷ peer",
        "",
        "ops/s above 1× means ours is faster; p99 and CPU per op below 1× mean ours is better.",
        "",
        "| workload | conc. | ours | peer | ops/s | p99 latency | client CPU per op |",
        "|---|---:|---|---|---:|---:|---:|",
    ]
    for row in rows:
        lines.append(
            f"| {row['workload']} | {row['concurrency']} | {row['ours']} | {row['peer']} "
            f"| {_x(row['ops_ratio'])} | {_x(row['p99_ratio'])} | {_x(row['cpu_ratio'])} |"
        )
    if not rows:
        lines.append("| (no pair of measured cells) | | | | | | |")
    gains = protocol_gains(results)
    if gains:
        lines += [
            "",
            "## Commit protocols: variant ÷ two-phase commit",
            "",
            "The small transaction asking for 1PC or async commit, against the same transaction",
            "committed in two phases by the same client at the same concurrency: ops/s above 1×",
            "is a gain; latency and CPU per op below 1× are. *committed as*: how the variant's",
            "transactions actually committed (warm-up included).",
            "",
            "| variant | baseline | client | conc. | ops/s | p50 latency | p99 latency "
            "| client CPU per op | committed as |",
            "|---|---|---|---:|---:|---:|---:|---:|---|",
        ]
        for row in gains:
            lines.append(
                f"| {row['workload']} | {row['baseline']} | {row['client']} "
                f"| {row['concurrency']} | {_x(row['ops_ratio'])} | {_x(row['p50_ratio'])} "
                f"| {_x(row['p99_ratio'])} | {_x(row['cpu_ratio'])} "
                f"| {committed_as(row.get('commit_protocols'))} |"
            )
    if capacity:
        lines += [
            "",
            "## Mock capacity (tikvpb stubs straight at one store)",
            "",
            "| mode | requests/s | messages/s | in flight | server util | client util | errors "
            "| server CPU µs / request |",
            "|---|---:|---:|---:|---:|---:|---:|---:|",
        ]
        for cap in capacity:
            if "error" in cap:
                lines.append(f"| {cap['mode']} | failed: {cap['error']} | | | | | | |")
                continue
            lines.append(
                f"| {cap['mode']} | {_num(cap['requests_per_s'])} | {_num(cap['messages_per_s'])} "
                f"| {cap['in_flight']} | {_num(cap.get('server_util'), 2)} "
                f"| {_num(cap.get('client_util'), 2)} | {cap.get('errors', 0)} "
                f"| {_num(cap.get('server_us_per_request'), 2)} |"
            )
    lines.append("")
    return "\n".join(lines)


def _client_order(client: str) -> int:
    order = [*OURS, *PEERS]
    return order.index(client) if client in order else len(order)


def write_json(path: Path, payload: dict[str, Any]) -> None:
    """Write ``payload`` as indented JSON."""
    path.write_text(json.dumps(payload, indent=2, sort_keys=False) + "\n", encoding="utf-8")


def write_chart(path: Path, results: Sequence[dict[str, Any]]) -> str | None:
    """Draw ops/s per workload, concurrency and client as a PNG.

    Returns ``None`` on success, or why no chart was drawn (matplotlib is missing, or
    nothing was measured).
    """
    try:
        import matplotlib  # type: ignore[import-not-found, unused-ignore]

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt  # type: ignore[import-not-found, unused-ignore]
    except ImportError:
        return "matplotlib is not installed"
    cells = _cells(results)
    workloads = [w for w in WORKLOADS if any(k[0] == w and _measured(v) for k, v in cells.items())]
    if not workloads:
        return "no measured cells"
    clients = [c for c in (*OURS, *PEERS) if any(k[2] == c for k in cells)]
    cols = 4
    rows = (len(workloads) + cols - 1) // cols
    fig, axes = plt.subplots(rows, cols, figsize=(4.2 * cols, 3.4 * rows), squeeze=False)
    colours = {"ours-async": "#1f77b4", "ours-sync": "#6baed6", "tikv-client": "#d62728"}
    colours["tikv-python"] = "#2ca02c"
    for index, workload in enumerate(workloads):
        ax = axes[index // cols][index % cols]
        levels = sorted({c for w, c, _ in cells if w == workload})
        width = 0.8 / max(len(clients), 1)
        for j, client in enumerate(clients):
            xs: list[float] = []
            ys: list[float] = []
            for i, level in enumerate(levels):
                cell = cells.get((workload, level, client))
                if cell is not None and _measured(cell):
                    xs.append(i + (j - (len(clients) - 1) / 2) * width)
                    ys.append(float(cell["ops_per_s"]))
            ax.bar(xs, ys, width=width, label=client, color=colours.get(client))
        ax.set_xticks(range(len(levels)))
        ax.set_xticklabels([f"c={level}" for level in levels])
        ax.set_title(WORKLOADS[workload].title, fontsize=10)
        ax.set_ylabel("ops/s")
        ax.set_ylim(bottom=0)
        ax.grid(axis="y", alpha=0.3)
    for index in range(len(workloads), rows * cols):
        axes[index // cols][index % cols].axis("off")
    handles, labels = axes[0][0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="upper center", ncol=len(clients), frameon=False)
    fig.tight_layout(rect=(0, 0, 1, 0.94))
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return None
