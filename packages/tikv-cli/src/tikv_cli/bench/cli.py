"""``tikv bench``: run workloads with this project's client, with a progress bar and a table.

The client runs in this process; the cluster is ``--pd`` or an embedded one started in its
own process (so they do not share a GIL). For the comparison with the other Python clients
use ``benchmarks/run.py`` (``nox -s bench``).
"""

from __future__ import annotations

import argparse
import json
from typing import Any, TextIO

from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from tikv_cli._format import UsageError, parse_endpoints
from tikv_cli.bench.measure import WORKLOADS
from tikv_cli.bench.report import committed_as, protocol_gains

__all__ = [
    "add_bench_parser",
    "gains_table",
    "parse_concurrency",
    "run_bench_command",
    "summary_table",
]


def parse_concurrency(text: str) -> list[int]:
    """Parse ``1,16,128`` into concurrency levels.

    Raises:
        argparse.ArgumentTypeError: Not a comma-separated list of positive integers.

    """
    levels: list[int] = []
    for part in text.split(","):
        try:
            value = int(part)
        except ValueError:
            raise argparse.ArgumentTypeError(
                f"invalid concurrency {text!r}: expected N or N,N,... (positive integers)"
            ) from None
        if value < 1 or value > 4096:
            raise argparse.ArgumentTypeError(f"concurrency must be in [1, 4096], got {value}")
        levels.append(value)
    return levels


def _duration(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"invalid duration {text!r}") from None
    if not 0 < value <= 3600:
        raise argparse.ArgumentTypeError(f"duration must be in (0, 3600] seconds, got {text}")
    return value


def _warmup(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"invalid warm-up {text!r}") from None
    if not 0 <= value <= 600:
        raise argparse.ArgumentTypeError(f"warm-up must be in [0, 600] seconds, got {text}")
    return value


def add_bench_parser(sub: Any) -> None:
    """Add ``bench`` to the ``tikv`` sub-commands."""
    names = ", ".join(WORKLOADS)
    p = sub.add_parser(
        "bench",
        help="benchmark a workload with this project's client",
        description="Benchmark workloads with this project's client, against --pd or\n"
        "an embedded cluster in its own process.\n\nworkloads ('all' runs every one):\n"
        + "\n".join(f"  {w.name:<14} {w.description}" for w in WORKLOADS.values()),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("workloads", nargs="+", metavar="WORKLOAD", help=f"{names} or all")
    p.add_argument(
        "--concurrency",
        type=parse_concurrency,
        default=None,
        metavar="N[,N...]",
        help="concurrent operations (default: 16; e.g. 1,16,128)",
    )
    p.add_argument(
        "--duration", type=_duration, default=3.0, help="seconds per measurement (default 3)"
    )
    p.add_argument(
        "--warmup", type=_warmup, default=None, help="seconds of warm-up (default per workload)"
    )
    p.add_argument(
        "--client",
        choices=("async", "sync"),
        default="async",
        help="asyncio client with tasks (default) or the blocking client with threads",
    )
    p.add_argument("--json", action="store_true", help="print the results as JSON")
    p.add_argument("--pd", metavar="HOST:PORT[,...]", help="cluster to use (default: embedded)")
    p.add_argument("--no-preload", action="store_true", help="do not load the workload's data")
    p.add_argument(
        "--regions", type=int, default=8, help="regions of the embedded cluster (default 8)"
    )


def _workloads(names: list[str]) -> list[str]:
    if "all" in names:
        return list(WORKLOADS)
    unknown = [n for n in names if n not in WORKLOADS]
    if unknown:
        raise UsageError(
            f"unknown workload {unknown[0]!r}; choose from {', '.join(WORKLOADS)} or all"
        )
    return list(dict.fromkeys(names))


def run_bench_command(args: argparse.Namespace, *, out: TextIO, err: TextIO) -> int:
    """Run ``tikv bench``; returns the exit status (3 if a cell had errors or gave up)."""
    workloads = _workloads(args.workloads)
    levels: list[int] = args.concurrency or [16]
    if not 1 <= args.regions <= 256:
        raise UsageError(f"--regions must be in [1, 256], got {args.regions}")
    client = f"ours-{args.client}"
    console = Console(file=err, highlight=False)
    if args.pd:
        endpoints = parse_endpoints(args.pd)
        return _run_all(client, workloads, levels, endpoints, None, args, console=console, out=out)
    from tikv_cli.bench.server import ServerProcess

    console.print(
        f"Starting an embedded cluster in its own process (3 stores, {args.regions} regions) …"
    )
    with ServerProcess(stores=3, regions=args.regions) as server:
        console.print(f"Cluster at PD {server.endpoints[0]} (pid {server.pid})")
        return _run_all(
            client, workloads, levels, server.endpoints, server.pid, args, console=console, out=out
        )


def _run_all(
    client: str,
    workloads: list[str],
    levels: list[int],
    endpoints: list[str],
    server_pid: int | None,
    args: argparse.Namespace,
    *,
    console: Console,
    out: TextIO,
) -> int:
    from tikv_cli.bench.runner import run_cell

    rows: list[dict[str, Any]] = []
    status = 0
    loaded: set[str] = set()  # data sets preloaded (workloads may share one)
    with Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        TextColumn("{task.fields[phase]:<8} {task.fields[ops]:>9} ops"),
        TimeElapsedColumn(),
        console=console,
        transient=False,
    ) as progress:
        for workload in workloads:
            spec = WORKLOADS[workload]
            for level in levels:
                warmup = spec.warmup if args.warmup is None else args.warmup
                total = warmup + args.duration
                task = progress.add_task(
                    f"{workload} ×{level}", total=total, phase="connect", ops=0
                )

                def update(
                    phase: str, ops: int, seconds: float, task: Any = task, warmup: float = warmup
                ) -> None:
                    done = seconds if phase == "warmup" else warmup + min(seconds, args.duration)
                    progress.update(task, completed=done, phase=phase, ops=ops)

                result = run_cell(
                    client,
                    workload,
                    endpoints,
                    concurrency=level,
                    duration=args.duration,
                    warmup=args.warmup,
                    preload=not args.no_preload and spec.data_set not in loaded,
                    server_pid=server_pid,
                    progress=update,
                )
                progress.update(task, completed=total, phase="done")
                if "ops" in result:
                    loaded.add(spec.data_set)
                row = {"client": client, "workload": workload, "concurrency": level, **result}
                rows.append(row)
                if row.get("errors") or row.get("aborted"):
                    status = 3
    gains = protocol_gains(rows)
    if args.json:
        print(json.dumps({"results": rows, "protocol_gains": gains}, indent=2), file=out)
    else:
        # Not a terminal (a pipe, a file): wide enough that the table is not squeezed.
        width = None if out.isatty() else 160
        table_console = Console(file=out, highlight=False, width=width)
        table_console.print(summary_table(rows))
        if gains:
            table_console.print(gains_table(gains))
    return status


def _fmt(value: Any, digits: int = 1) -> str:
    if value is None:
        return "—"
    if isinstance(value, float):
        return f"{value:,.{digits}f}"
    return f"{value:,}" if isinstance(value, int) else str(value)


def summary_table(rows: list[dict[str, Any]]) -> Table:
    """The results as a rich table (one row per cell)."""
    table = Table(title="tikv bench", show_lines=False)
    for name in (
        "workload",
        "client",
        "conc.",
        "ops",
        "ops/s",
        "p50 ms",
        "p99 ms",
        "CPU s/1k ops",
        "client util",
        "server util",
        "errors",
    ):
        table.add_column(name, justify="left" if name in ("workload", "client") else "right")
    for row in rows:
        if "unsupported" in row or "error" in row:
            table.add_row(
                row["workload"],
                row["client"],
                str(row["concurrency"]),
                "—",
                row.get("unsupported") or row.get("error"),
                *["—"] * 6,
            )
            continue
        lat = row.get("latency_ms") or {}
        table.add_row(
            row["workload"],
            row["client"],
            str(row["concurrency"]),
            _fmt(row["ops"]),
            _fmt(row["ops_per_s"]),
            _fmt(lat.get("p50_ms"), 2),
            _fmt(lat.get("p99_ms"), 2),
            _fmt(row.get("client_cpu_s_per_1k_ops"), 3),
            _fmt(row.get("client_util"), 2),
            _fmt(row.get("server_util"), 2),
            _fmt(row.get("errors")) + (f" ({row['aborted']})" if row.get("aborted") else ""),
        )
    return table


def gains_table(gains: list[dict[str, Any]]) -> Table:
    """The commit-protocol gains (:func:`~tikv_cli.bench.report.protocol_gains`) as a table."""
    table = Table(title="commit protocol ÷ two-phase commit (ops/s > 1× and latency < 1× gain)")
    for name in ("variant", "client", "conc.", "ops/s", "p50", "p99", "CPU/op", "committed as"):
        table.add_column(name, justify="left" if name in ("variant", "client") else "right")
    for row in gains:
        table.add_row(
            row["workload"],
            row["client"],
            str(row["concurrency"]),
            *(
                "—" if row[key] is None else f"{row[key]:.2f}×"
                for key in ("ops_ratio", "p50_ratio", "p99_ratio", "cpu_ratio")
            ),
            committed_as(row.get("commit_protocols")),
        )
    return table
