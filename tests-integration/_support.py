"""Helpers shared by the fault scenarios of the integration suite.

Not a test module: ``tests-integration/conftest.py`` puts this directory on ``sys.path``
so that the tests can ``import _support`` (pytest runs with ``--import-mode=importlib``).

- :func:`poll` / :func:`apoll` wait for a condition with a deadline (never a fixed sleep);
- :func:`within` awaits with a deadline; :func:`region_id` names the region of a key;
- :func:`new_cluster` starts a private embedded cluster (fault tests stop stores, move the
  PD leader and split regions, which must not disturb the session's shared cluster);
- :func:`sender_stats` reads the request pipeline's counters of a raw client
  (attempts, send failures, region errors by kind, backoffs, reshards);
- :class:`WriteLog` records what a concurrent workload attempted, what was acknowledged
  and what raised, and checks the invariants a client must keep under faults.
"""

from __future__ import annotations

import asyncio
import socket
import threading
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import TypeVar

from tikv_mockstore import MockCluster
from tikv_pd.errors import ClientClosedError
from tikv_pd.request import RequestStats
from tikv_raw import AsyncRawClient, RawClient

#: Generous bound for "no hang": the raw backoff budget is 20 s of sleep per operation
#: (client-go ``RawkvMaxBackoff``); an operation that takes longer than this is stuck.
NO_HANG = 60.0

T = TypeVar("T")


def poll(condition: Callable[[], bool], within: float = 30.0, what: str = "condition") -> None:
    """Wait (blocking) until ``condition()`` holds; fail after ``within`` seconds."""
    deadline = time.monotonic() + within
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"{what} not met within {within} s")
        time.sleep(0.01)


async def apoll(
    condition: Callable[[], bool], within: float = 30.0, what: str = "condition"
) -> None:
    """Wait (asyncio) until ``condition()`` holds; fail after ``within`` seconds."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + within
    while not condition():
        if loop.time() > deadline:
            raise AssertionError(f"{what} not met within {within} s")
        await asyncio.sleep(0.01)


async def within(awaitable: Awaitable[T], seconds: float = NO_HANG) -> T:
    """Await with a generous deadline: a hang fails the test instead of the whole run."""
    return await asyncio.wait_for(awaitable, seconds)


def region_id(mock: MockCluster, key: bytes) -> int:
    """The id of the embedded cluster's region holding the transactional user key ``key``."""
    region = mock.region_by_key(key, txn=True)
    assert region is not None
    return region.id


def spread_leaders(cluster: MockCluster) -> None:
    """Put region leaders round-robin on the stores (as the session cluster does)."""
    stores = [s.id for s in cluster.stores()]
    for i, region in enumerate(cluster.regions()):
        cluster.transfer_leader(region.id, stores[i % len(stores)])


def new_cluster(*, stores: int = 3, regions: int = 8, **options: object) -> MockCluster:
    """A private embedded cluster with leaders spread over the stores (close it)."""
    cluster = MockCluster(stores=stores, regions=regions, **options)  # type: ignore[arg-type]
    try:
        spread_leaders(cluster)
    except BaseException:
        cluster.close()
        raise
    return cluster


def sender_stats(client: RawClient | AsyncRawClient) -> RequestStats:
    """The request pipeline counters of a raw client (either flavour)."""
    inner = client._client if isinstance(client, RawClient) else client
    return inner._shared.router.sender.stats  # type: ignore[attr-defined,no-any-return]


def refuses_connections(address: str) -> bool:
    """Whether nothing listens on ``host:port`` any more (a stopped store)."""
    host, port = address.rsplit(":", 1)
    try:
        with socket.create_connection((host, int(port)), timeout=1.0):
            return False
    except OSError:
        return True


def spread_keys(prefix: bytes, count: int) -> list[bytes]:
    """``count`` keys whose first byte walks the whole byte range (every region).

    The shared and private clusters split by the first key byte, so these keys land in
    every region; ``prefix`` follows the first byte to keep a test's keys its own.
    """
    return [bytes([(i * 7) % 256]) + prefix + b"%06d" % i for i in range(count)]


@dataclass
class WriteLog:
    """What a concurrent write workload did, for checking invariants afterwards.

    ``acked``: key → the value of the last acknowledged write of that key, by the writer
    that owns the key (each key has one writer, so writes of a key are ordered).
    ``after_ack``: key → values of writes of that key issued after its last ack that
    raised an error (they may or may not have been applied).
    ``errors``: every exception raised by the workload's operations.
    """

    acked: dict[bytes, bytes] = field(default_factory=dict)
    after_ack: dict[bytes, list[bytes]] = field(default_factory=dict)
    errors: list[BaseException] = field(default_factory=list)
    ops: int = 0
    _mu: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def ok(self, pairs: Mapping[bytes, bytes]) -> None:
        """Record an acknowledged write of ``pairs``."""
        with self._mu:
            self.ops += 1
            for k, v in pairs.items():
                self.acked[k] = v
                self.after_ack.pop(k, None)

    def failed(self, pairs: Mapping[bytes, bytes], exc: BaseException) -> None:
        """Record a write of ``pairs`` that raised ``exc`` (its outcome is unknown).

        A closed client ends the workload: the error is recorded and raised again, so the
        writer stops. An operation on a closed client fails without suspending, so a writer
        loop that swallowed it would never yield to the event loop again — after a failed
        test closes its client, such a loop spins forever and fills memory with errors.
        """
        with self._mu:
            self.ops += 1
            self.errors.append(exc)
            for k, v in pairs.items():
                self.after_ack.setdefault(k, []).append(v)
        if isinstance(exc, ClientClosedError):
            raise exc

    def check(self, stored: Mapping[bytes, bytes]) -> None:
        """Assert the invariants against what the cluster holds for the workload's keys.

        - every acknowledged write is there, or a later write of the same key that raised
          (its outcome is unknown) is there instead;
        - a key that was never acknowledged holds nothing or one of its raised writes;
        - nothing else is there (no key the workload never wrote).
        """
        keys = set(self.acked) | set(self.after_ack)
        stray = set(stored) - keys
        assert not stray, f"{len(stray)} keys nobody wrote, e.g. {sorted(stray)[:3]}"
        for key in keys:
            allowed = set(self.after_ack.get(key, ()))
            if key in self.acked:
                allowed.add(self.acked[key])
                assert stored.get(key) in allowed, (
                    f"{key!r}: acknowledged {self.acked[key]!r}, found {stored.get(key)!r}"
                )
            else:
                assert key not in stored or stored[key] in allowed, (
                    f"{key!r}: never acknowledged, found {stored[key]!r}"
                )
