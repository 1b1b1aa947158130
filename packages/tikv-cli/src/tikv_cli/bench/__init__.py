"""Benchmarks: YCSB-like workloads, the measurement loop, runners, reports.

- :mod:`~tikv_cli.bench.measure` — workloads, the closed-loop window and statistics
  (standard library only; shared with the third-party runner).
- :mod:`~tikv_cli.bench.ours` / :mod:`~tikv_cli.bench.runner` — this project's clients.
- :mod:`~tikv_cli.bench.peer_runner` — ``tikv-client`` and ``tikv-python``, run as a script
  in their own virtualenvs.
- :mod:`~tikv_cli.bench.server` — the embedded cluster in its own process.
- :mod:`~tikv_cli.bench.harness` — the comparison run behind ``benchmarks/run.py``.
- :mod:`~tikv_cli.bench.capacity` — how many raw requests the mock itself serves.
- :mod:`~tikv_cli.bench.report` — Markdown, JSON and the chart.
- :mod:`~tikv_cli.bench.cli` — ``tikv bench``.
"""
