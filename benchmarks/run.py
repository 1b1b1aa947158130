"""Compare this project's TiKV client with tikv-client 0.0.4 and tikv-python 0.1.1.

``python benchmarks/run.py`` (or ``nox -s bench``) runs every workload at concurrency 1, 16
and 128 for each client, each in its own process, against one embedded cluster in another
process, then the mock-capacity benchmark; it writes ``benchmarks/results/<UTC stamp>/``
``results.json``, ``results.md`` and ``results.png`` (the chart needs matplotlib). Run
``python benchmarks/run.py --help`` for the options; ``--quick`` is a smoke run of about a
minute. The harness lives in :mod:`tikv_cli.bench.harness`.
"""

from __future__ import annotations

import sys
from pathlib import Path

from tikv_cli.bench.harness import main

if __name__ == "__main__":
    sys.exit(main(sys.argv[1:], root=Path(__file__).resolve().parent.parent))
