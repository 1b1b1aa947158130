"""Shared fixtures: embedded clusters in this process and a runner of the ``tikv`` command."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import pytest
from tikv_cli.main import main
from tikv_mockstore import MockCluster


@dataclass
class Outcome:
    code: int
    out: str
    err: str


@pytest.fixture
def tikv(capsys: pytest.CaptureFixture[str]):  # type: ignore[no-untyped-def]
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
