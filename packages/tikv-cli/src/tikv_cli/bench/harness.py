"""The comparison run behind ``benchmarks/run.py``: every client, every workload, one cluster.

One embedded cluster runs in its own process (:class:`~tikv_cli.bench.server.ServerProcess`).
Each *cell* (client × workload × concurrency) runs in a fresh client process, so its
``getrusage`` CPU and peak RSS are its own: this project's two flavours through
``python -m tikv_cli.bench.runner``, the third-party clients through
:mod:`~tikv_cli.bench.peer_runner` with the Python of their own virtualenv (created on
first use with ``uv``, or ``venv`` + ``pip``, and pinned to ``tikv-client==0.0.4`` and
``tikv-python==0.1.1``). Clients are interleaved cell by cell, so slow drifts of a shared
machine hit them alike. The first client to run a workload preloads its data.

Then the mock-capacity benchmark (:mod:`~tikv_cli.bench.capacity`) runs, and the results
(cells, ours ÷ each peer, and the gain of 1PC / async commit over two-phase commit of
the small transaction) go to ``<out>/results.json``, ``<out>/results.md`` and ``<out>/results.png``.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import shutil
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tikv_cli.bench.measure import WORKLOADS
from tikv_cli.bench.peer_runner import PEER_SUPPORT
from tikv_cli.bench.report import (
    OURS,
    compare,
    markdown_report,
    protocol_gains,
    write_chart,
    write_json,
)

__all__ = [
    "PEER_PACKAGES",
    "Plan",
    "default_venv_dir",
    "ensure_peer_venv",
    "main",
    "parse_args",
    "plan_cells",
    "run_plan",
]

#: The third-party clients and the exact versions compared.
PEER_PACKAGES = {"tikv-client": "tikv-client==0.0.4", "tikv-python": "tikv-python==0.1.1"}
_PEER_RUNNER = Path(__file__).with_name("peer_runner.py")
_ALL_CLIENTS = (*OURS, *PEER_PACKAGES)


def default_venv_dir() -> Path:
    """Where the third-party clients' virtualenvs live (``$XDG_CACHE_HOME`` or ``~/.cache``)."""
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "tikv-python-bench" / "venvs"


def ensure_peer_venv(client: str, venv_dir: Path, *, log: Callable[[str], None]) -> Path:
    """Create (once) the virtualenv of third-party ``client``; returns its Python.

    Raises:
        RuntimeError: The virtualenv or the install failed (the message has the output).

    """
    requirement = PEER_PACKAGES[client]
    venv = venv_dir / client
    python = venv / "bin" / "python"
    module = "tikv_client" if client == "tikv-client" else "tikv"
    version = requirement.split("==")[1]
    probe = (
        f"import importlib.metadata as m, {module}; "
        f"assert m.version({client!r}) == {version!r}, m.version({client!r})"
    )
    if (
        python.exists()
        and subprocess.run([str(python), "-c", probe], capture_output=True).returncode == 0
    ):
        return python
    log(f"installing {requirement} into {venv} …")
    venv_dir.mkdir(parents=True, exist_ok=True)
    uv = shutil.which("uv")
    if uv:
        steps = [
            [uv, "venv", "--quiet", "--python", sys.executable, str(venv)],
            [uv, "pip", "install", "--quiet", "--python", str(python), requirement],
        ]
    else:
        steps = [
            [sys.executable, "-m", "venv", str(venv)],
            [str(python), "-m", "pip", "install", "--quiet", requirement],
        ]
    for step in steps:
        done = subprocess.run(step, capture_output=True, text=True)
        if done.returncode != 0:
            raise RuntimeError(
                f"{' '.join(step)} failed ({done.returncode}): "
                f"{(done.stderr or done.stdout)[-800:]}"
            )
    check = subprocess.run([str(python), "-c", probe], capture_output=True, text=True)
    if check.returncode != 0:
        raise RuntimeError(f"{requirement} did not install correctly: {check.stderr[-800:]}")
    return python


@dataclass
class Plan:
    """What one run measures."""

    workloads: list[str]
    clients: list[str]
    duration: float
    warmup: float | None
    #: Concurrency levels per workload (default: the workload's own levels).
    levels: dict[str, list[int]] = field(default_factory=dict)
    capacity_duration: float = 3.0
    cell_timeout: float = 180.0
    regions: int = 8
    skipped: list[dict[str, Any]] = field(default_factory=list)


def plan_cells(plan: Plan) -> list[tuple[str, int, str]]:
    """The cells to run, in run order: (workload, concurrency, client), clients interleaved.

    Cells a client has no API for are left out and listed in ``plan.skipped``.
    """
    cells: list[tuple[str, int, str]] = []
    plan.skipped.clear()
    for workload in plan.workloads:
        levels = plan.levels.get(workload) or list(WORKLOADS[workload].concurrencies)
        for level in levels:
            for client in plan.clients:
                if client in PEER_SUPPORT and workload not in PEER_SUPPORT[client]:
                    plan.skipped.append(
                        {
                            "client": client,
                            "workload": workload,
                            "concurrency": level,
                            "unsupported": f"{client} has no API for this workload",
                        }
                    )
                    continue
                cells.append((workload, level, client))
    return cells


def _parse_result(stdout: str) -> dict[str, Any]:
    for line in reversed(stdout.splitlines()):
        if line.startswith("RESULT "):
            result: dict[str, Any] = json.loads(line.removeprefix("RESULT "))
            return result
    return {"error": "the runner printed no RESULT line"}


def _cell_command(
    client: str,
    workload: str,
    level: int,
    plan: Plan,
    *,
    endpoints: list[str],
    server_pid: int,
    preload: bool,
    pythons: dict[str, Path],
) -> list[str]:
    if client in OURS:
        argv = [sys.executable, "-m", "tikv_cli.bench.runner"]
    else:
        argv = [str(pythons[client]), str(_PEER_RUNNER)]
    argv += ["--client", client, "--workload", workload, "--concurrency", str(level)]
    argv += ["--duration", str(plan.duration), "--pd", ",".join(endpoints)]
    argv += ["--server-pid", str(server_pid)]
    if plan.warmup is not None and WORKLOADS[workload].warmup > 0:
        # A workload without warm-up (one operation may outlast the window) keeps none.
        argv += ["--warmup", str(plan.warmup)]
    if preload:
        argv.append("--preload")
    return argv


def run_plan(
    plan: Plan,
    *,
    venv_dir: Path,
    log: Callable[[str], None],
    pin: bool = False,
) -> dict[str, Any]:
    """Run every cell and the capacity benchmark; returns the whole result document."""
    started = time.time()
    pythons: dict[str, Path] = {}
    setup_errors: dict[str, str] = {}
    for client in plan.clients:
        if client in PEER_PACKAGES:
            try:
                pythons[client] = ensure_peer_venv(client, venv_dir, log=log)
            except RuntimeError as exc:
                setup_errors[client] = str(exc)
                log(f"{client}: {exc}")
    cells = plan_cells(plan)
    from tikv_cli.bench.server import ServerProcess

    results: list[dict[str, Any]] = list(plan.skipped)
    capacity: list[dict[str, Any]] = []
    with ServerProcess(stores=3, regions=plan.regions, pin_cpu=1 if pin else None) as server:
        log(f"cluster: PD {server.endpoints[0]}, server pid {server.pid}")
        loaded: set[tuple[str, str]] = set()
        for n, (workload, level, client) in enumerate(cells, 1):
            head = f"[{n}/{len(cells)}] {workload:<14} c={level:<4} {client:<12}"
            if client in setup_errors:
                results.append(
                    {
                        "client": client,
                        "workload": workload,
                        "concurrency": level,
                        "error": f"setup failed: {setup_errors[client]}"[:500],
                    }
                )
                continue
            # Transactional data is per client (its own namespace): locks a client's failed
            # transactions leave behind must not stall the next client's window.
            spec = WORKLOADS[workload]
            namespace = client if spec.kind == "txn" else ""
            data = (spec.data_set, namespace)
            preload = data not in loaded
            argv = _cell_command(
                client,
                workload,
                level,
                plan,
                endpoints=server.endpoints,
                server_pid=server.pid,
                preload=preload,
                pythons=pythons,
            )
            if namespace:
                argv += ["--namespace", namespace]
            t0 = time.perf_counter()
            try:
                done = subprocess.run(
                    argv,
                    capture_output=True,
                    text=True,
                    timeout=plan.cell_timeout,
                    preexec_fn=(lambda: os.sched_setaffinity(0, {0})) if pin else None,
                )
                result = _parse_result(done.stdout)
                if "error" in result and done.stderr.strip():
                    result["stderr"] = done.stderr.strip()[-800:]
            except subprocess.TimeoutExpired:
                result = {"error": f"the cell did not finish within {plan.cell_timeout} s"}
            if "ops" in result and preload:
                loaded.add(data)
            cell = {"client": client, "workload": workload, "concurrency": level, **result}
            results.append(cell)
            log(f"{head} {_one_line(cell)}  ({time.perf_counter() - t0:.1f} s)")
        if plan.capacity_duration > 0:
            log("mock capacity (tikvpb stubs straight at one store) …")
            done = subprocess.run(
                [
                    sys.executable,
                    "-m",
                    "tikv_cli.bench.capacity",
                    "--pd",
                    server.endpoints[0],
                    "--server-pid",
                    str(server.pid),
                    "--duration",
                    str(plan.capacity_duration),
                    "--warmup",
                    str(min(0.5, plan.capacity_duration / 2)),
                ],
                capture_output=True,
                text=True,
                timeout=plan.cell_timeout,
            )
            capacity = _parse_capacity(done.stdout, done.stderr)
            for cap in capacity:
                if "error" in cap:
                    log(f"  {cap['mode']:<10} failed: {cap['error']}")
                else:
                    log(
                        f"  {cap['mode']:<10} {cap['requests_per_s']:>10,.0f} req/s  "
                        f"server util {cap['server_util'] or 0:.2f}"
                    )
    return {
        "meta": _meta(plan, started, pythons),
        "results": results,
        "ratios": compare(results),
        "protocol_gains": protocol_gains(results),
        "capacity": capacity,
    }


def _parse_capacity(stdout: str, stderr: str) -> list[dict[str, Any]]:
    for line in reversed(stdout.splitlines()):
        if line.startswith("RESULT "):
            parsed: list[dict[str, Any]] = json.loads(line.removeprefix("RESULT "))
            return parsed
    return [{"mode": "all", "error": f"no RESULT line: {stderr.strip()[-300:]}"}]


def _one_line(cell: dict[str, Any]) -> str:
    if "unsupported" in cell:
        return f"unsupported: {cell['unsupported']}"
    if "error" in cell:
        return f"FAILED: {cell['error'][:200]}"
    lat = cell.get("latency_ms") or {}
    cpu = cell.get("client_cpu_s_per_1k_ops")
    ops = cell["ops_per_s"]
    rate = f"{ops:>10,.1f}" if ops >= 10 else f"{ops:>10.3f}"
    text = (
        f"{rate} ops/s  p50 {lat.get('p50_ms', 0):7.2f} ms  "
        f"p99 {lat.get('p99_ms', 0):8.2f} ms  CPU {cpu if cpu is not None else 0:7.3f} s/1k"
    )
    if cell.get("errors"):
        text += f"  errors {cell['errors']} ({cell.get('first_error')})"
    return text


def _meta(plan: Plan, started: float, pythons: dict[str, Path]) -> dict[str, Any]:
    return {
        "date (UTC)": datetime.datetime.fromtimestamp(started, datetime.UTC).strftime(
            "%Y-%m-%d %H:%M:%S"
        ),
        "machine": f"{platform.machine()}, {os.cpu_count()} CPUs, "
        f"Python {platform.python_version()}",
        "cluster": f"tikv-mockstore in its own process, 3 stores, {plan.regions} regions, API v1",
        "window": f"{plan.duration} s per cell"
        + ("" if plan.warmup is None else f", warm-up {plan.warmup} s"),
        "clients": ", ".join(
            f"{c} ({PEER_PACKAGES[c]})" if c in PEER_PACKAGES else c for c in plan.clients
        ),
        "wall time": f"{time.time() - started:.0f} s",
    }


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    """The ``benchmarks/run.py`` command line."""
    parser = argparse.ArgumentParser(
        prog="benchmarks/run.py",
        description="Compare this project's TiKV client with tikv-client 0.0.4 and "
        "tikv-python 0.1.1 on one embedded cluster.",
    )
    parser.add_argument("--quick", action="store_true", help="smoke run: c=16 only, 1 s windows")
    parser.add_argument("--duration", type=float, default=None, help="seconds per cell (3)")
    parser.add_argument("--warmup", type=float, default=None, help="warm-up seconds per cell")
    parser.add_argument("--workloads", default="all", help="comma list of workloads (all)")
    parser.add_argument(
        "--clients", default=",".join(_ALL_CLIENTS), help="comma list of clients (all)"
    )
    parser.add_argument(
        "--concurrency", default=None, help="comma list overriding every workload's levels"
    )
    parser.add_argument(
        "--capacity-duration", type=float, default=None, help="seconds per capacity mode (3)"
    )
    parser.add_argument("--out", type=Path, default=None, help="results folder")
    parser.add_argument("--venv-dir", type=Path, default=None, help="third-party venvs folder")
    parser.add_argument(
        "--pin", action="store_true", help="pin the server to CPU 1 and each client to CPU 0"
    )
    args = parser.parse_args(argv)
    workloads = list(WORKLOADS) if args.workloads == "all" else args.workloads.split(",")
    unknown = [w for w in workloads if w not in WORKLOADS]
    if unknown:
        parser.error(f"unknown workload {unknown[0]!r}; choose from {', '.join(WORKLOADS)}")
    clients = args.clients.split(",")
    bad = [c for c in clients if c not in _ALL_CLIENTS]
    if bad:
        parser.error(f"unknown client {bad[0]!r}; choose from {', '.join(_ALL_CLIENTS)}")
    levels = None
    if args.concurrency:
        try:
            levels = [int(x) for x in args.concurrency.split(",")]
        except ValueError:
            parser.error(f"--concurrency must be a comma list of integers: {args.concurrency!r}")
        if any(level < 1 for level in levels):
            parser.error("--concurrency levels must be >= 1")
    for name in ("duration", "warmup", "capacity_duration"):
        value = getattr(args, name)
        if value is not None and (value < 0 or (name == "duration" and value == 0)):
            parser.error(f"--{name.replace('_', '-')} must be positive")
    args.workload_list = workloads
    args.client_list = clients
    args.levels = levels
    return args


def main(argv: Sequence[str] | None = None, *, root: Path | None = None) -> int:
    """Run the comparison; returns 0, or 1 if a cell of ours failed."""
    args = parse_args(argv)
    quick = args.quick
    levels: dict[str, list[int]] = {}
    for name in args.workload_list:
        if args.levels:
            levels[name] = args.levels
        elif quick:
            # Smoke run: one level; the 100,000-key transaction stays at 1 in flight.
            levels[name] = [1] if name == "txn_large" else [16]
    plan = Plan(
        workloads=args.workload_list,
        clients=args.client_list,
        duration=args.duration or (1.0 if quick else 3.0),
        warmup=args.warmup if args.warmup is not None else (0.2 if quick else None),
        levels=levels,
        capacity_duration=(
            args.capacity_duration
            if args.capacity_duration is not None
            else (1.0 if quick else 3.0)
        ),
    )
    stamp = datetime.datetime.now(datetime.UTC).strftime("%Y%m%d-%H%M%S")
    out: Path = args.out or (root or Path.cwd()) / "benchmarks" / "results" / stamp
    out.mkdir(parents=True, exist_ok=True)

    def log(text: str) -> None:
        print(text, flush=True)

    log(f"benchmark run → {out}")
    doc = run_plan(plan, venv_dir=args.venv_dir or default_venv_dir(), log=log, pin=args.pin)
    write_json(out / "results.json", doc)
    report = markdown_report(doc["results"], meta=doc["meta"], capacity=doc["capacity"])
    (out / "results.md").write_text(report, encoding="utf-8")
    why = write_chart(out / "results.png", doc["results"])
    log("")
    log(report)
    log(f"wrote {out / 'results.json'} and {out / 'results.md'}")
    if why is None:
        log(f"wrote {out / 'results.png'}")
    else:
        log(f"no chart: {why}")
    failed = [
        r for r in doc["results"] if r["client"] in OURS and ("error" in r or r.get("errors"))
    ]
    return 1 if failed else 0
