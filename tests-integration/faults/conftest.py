"""Fixtures of the fault scenarios.

Fault scenarios stop stores, move the PD leader, split regions by the dozen and inject
region errors: each gets a private embedded cluster (starting one takes tens of
milliseconds) so that the session's shared cluster and the other tests never see the
damage. They need the embedded cluster's control API and are skipped when the suite runs
against a real cluster (``TIKV_PD_ENDPOINTS``).
"""

from __future__ import annotations

import os
import sys
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
from tikv_mockstore import MockCluster
from tikv_raw import AsyncRawClient, RawClient

_SUITE = str(Path(__file__).resolve().parent.parent)
if _SUITE not in sys.path:  # import-mode=importlib: make ``_support`` importable
    sys.path.insert(0, _SUITE)

from _support import new_cluster  # noqa: E402


@pytest.fixture
def cluster() -> Iterator[MockCluster]:
    """A private cluster: 3 stores, 8 regions split by first key byte, leaders spread."""
    if os.environ.get("TIKV_PD_ENDPOINTS"):
        pytest.skip("fault scenarios need the embedded cluster's control API")
    with new_cluster() as c:
        yield c


@pytest.fixture
def cluster3pd() -> Iterator[MockCluster]:
    """A private cluster with 3 PD members (for PD leader changes)."""
    if os.environ.get("TIKV_PD_ENDPOINTS"):
        pytest.skip("fault scenarios need the embedded cluster's control API")
    with new_cluster(pd_members=3) as c:
        yield c


@pytest.fixture
async def client(cluster: MockCluster) -> AsyncIterator[AsyncRawClient]:
    """An asyncio raw client of the private cluster."""
    async with await AsyncRawClient.connect(cluster.pd_endpoints) as c:
        yield c


@pytest.fixture
def sync_client(cluster: MockCluster) -> Iterator[RawClient]:
    """A blocking raw client of the private cluster."""
    with RawClient.connect(cluster.pd_endpoints) as c:
        yield c
