"""Shared test setup for tikv-txn: the mock cluster and clients most test modules use.

A module that needs another cluster shape (one store, a keyspace, store labels), a fresh
cluster per test, or a client with its own config defines its own ``cluster`` / ``client``
fixture, which takes precedence over these. Helper functions live in ``_txn_helpers``,
importable from the tests because this directory is put on ``sys.path`` here (pytest runs
with ``--import-mode=importlib``, which does not add it).
"""

from __future__ import annotations

import itertools
import sys
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
from tikv_mockstore import MockCluster
from tikv_txn import AsyncTransactionClient

_HERE = str(Path(__file__).resolve().parent)
if _HERE not in sys.path:
    sys.path.insert(0, _HERE)

# Key prefixes unique across the whole session (modules share nothing, but a module's
# tests share its cluster).
_prefix_ids = itertools.count()


@pytest.fixture(scope="module")
def cluster() -> Iterator[MockCluster]:
    """Three stores and four regions split at first bytes 0x40 / 0x80 / 0xC0, per module."""
    with MockCluster(stores=3, regions=4) as mock:
        yield mock


@pytest.fixture
async def client(cluster: MockCluster) -> AsyncIterator[AsyncTransactionClient]:
    """A transactional client of ``cluster`` with the default config."""
    async with await AsyncTransactionClient.connect(cluster.pd_endpoints) as c:
        yield c


@pytest.fixture
async def reader(cluster: MockCluster) -> AsyncIterator[AsyncTransactionClient]:
    """A second client: the "other process" that meets the first client's locks."""
    async with await AsyncTransactionClient.connect(cluster.pd_endpoints) as c:
        yield c


@pytest.fixture
def p() -> bytes:
    """A key prefix unique to the test."""
    return b"p%04d/" % next(_prefix_ids)
