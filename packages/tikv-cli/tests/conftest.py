"""Shared fixtures: embedded clusters in this process and a runner of the ``tikv`` command."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from tikv_cli.main import main
from tikv_mockstore import MockCluster

# Make the test helpers importable (import-mode=importlib does not add this folder).
_HERE = str(Path(__file__).resolve().parent)
if _HERE not in sys.path:
    sys.path.insert(0, _HERE)

from _cli_runner import Outcome, Tikv  # noqa: E402


@pytest.fixture
def tikv(capsys: pytest.CaptureFixture[str]) -> Tikv:
    """Run ``tikv ARGS...`` in this process; returns the exit status and the output."""

    def run(*argv: str) -> Outcome:
        capsys.readouterr()
        try:
            code = main(list(argv))
        except SystemExit as exc:  # argparse usage errors and --help
            code = exc.code if isinstance(exc.code, int) else 1
        captured = capsys.readouterr()
        return Outcome(code, captured.out, captured.err)

    return run


@pytest.fixture(scope="module")
def raw_cluster() -> Iterator[MockCluster]:
    # V1TTL: API v1 raw keys with TTLs enabled (TiKV storage.enable-ttl), 4 regions.
    with MockCluster(stores=3, regions=4, api_version="V1TTL") as cluster:
        yield cluster


@pytest.fixture(scope="module")
def txn_cluster() -> Iterator[MockCluster]:
    with MockCluster(stores=3, regions=4) as cluster:
        yield cluster
