"""``tikv demo``: a short, printed tour of raw and transactional TiKV.

Without ``--pd`` it starts an embedded :class:`tikv_mockstore.MockCluster` (3 stores,
8 regions, API v2 so that raw TTLs and transactions both work), runs the tour and stops the
cluster. Every step prints what it does and what came back. Steps whose feature is not
available (transactions before ``tikv-txn`` provides its client, TTL on a cluster without
it) say so and the tour goes on.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from typing import Any, TextIO

from rich.console import Console
from rich.markup import escape
from rich.table import Table
from tikv_pd.errors import TiKVError, WriteConflictError
from tikv_txn import TransactionClient

from tikv_cli._clients import connect_raw, connect_txn
from tikv_cli._format import show_bytes

__all__ = ["run_demo"]

_PREFIX = b"demo/"


def _k(name: str) -> bytes:
    return _PREFIX + name.encode()


def _s(data: bytes | None) -> str:
    return "None" if data is None else repr(show_bytes(data))


class _Tour:
    """Prints numbered steps and their results."""

    def __init__(self, console: Console) -> None:
        self.console = console
        self.failures = 0

    def section(self, title: str) -> None:
        self.console.print()
        self.console.rule(f"[bold]{title}")

    def step(self, what: str, result: str, *, styled: bool = False) -> None:
        shown = result if styled else escape(result)
        self.console.print(f"  {escape(what)}  [cyan]→[/] {shown}")

    def note(self, text: str) -> None:
        self.console.print(f"  [dim]{escape(text)}[/]")

    def unavailable(self, what: str, why: str) -> None:
        self.console.print(f"  [yellow]{escape(what)}: not available — {escape(why)}[/]")

    def failed(self, what: str, exc: BaseException) -> None:
        self.failures += 1
        text = escape(f"{what} failed: {type(exc).__name__}: {exc}")
        self.console.print(f"  [red]{text}[/]")


def run_demo(
    endpoints: Sequence[str] | None,
    *,
    api_version: int = 1,
    timeout: float = 5.0,
    out: TextIO,
) -> int:
    """Run the tour against ``endpoints``, or an embedded cluster when ``None``.

    Returns 0 when every available step succeeded, 3 when one failed.
    """
    console = Console(file=out, highlight=False, soft_wrap=True)
    tour = _Tour(console)
    if endpoints is not None:
        console.print(f"Using the cluster at PD {', '.join(endpoints)} (API v{api_version})")
        _tour(tour, list(endpoints), api_version=api_version, timeout=timeout)
        return 0 if tour.failures == 0 else 3
    from tikv_mockstore import MockCluster

    console.print("Starting an embedded cluster: 1 PD, 3 TiKV stores, 8 regions, API v2 …")
    started = time.perf_counter()
    with MockCluster(stores=3, regions=8, api_version=2) as cluster:
        elapsed = time.perf_counter() - started
        console.print(
            f"Cluster up in {elapsed:.2f} s — PD at [bold]{cluster.pd_endpoints[0]}[/], "
            f"stores at {', '.join(cluster.store_addresses.values())}"
        )
        _tour(tour, cluster.pd_endpoints, api_version=2, timeout=timeout)
        tour.section("Shutting down")
        console.print("Stopping the embedded cluster …")
    console.print("Cluster stopped. Bye!")
    return 0 if tour.failures == 0 else 3


def _tour(tour: _Tour, endpoints: list[str], *, api_version: int, timeout: float) -> None:
    _raw_tour(tour, endpoints, api_version=api_version, timeout=timeout)
    _txn_tour(tour, endpoints, api_version=api_version, timeout=timeout)


def _attempt(tour: _Tour, what: str, fn: Callable[[], Any]) -> Any:
    try:
        return fn()
    except TiKVError as exc:
        tour.failed(what, exc)
        return None


def _raw_tour(tour: _Tour, endpoints: list[str], *, api_version: int, timeout: float) -> None:
    tour.section("Raw key-value API (RawClient)")
    with connect_raw(endpoints, api_version=api_version, timeout=timeout) as raw:
        greeting = b"hello, TiKV"

        def put_get() -> None:
            raw.put(_k("greeting"), greeting)
            tour.step(f"put({_s(_k('greeting'))}, {_s(greeting)})", "OK")
            tour.step(f"get({_s(_k('greeting'))})", _s(raw.get(_k("greeting"))))

        _attempt(tour, "put / get", put_get)

        fruits = {_k(f"fruit/{name}"): colour for name, colour in _FRUITS}

        def batch_scan() -> None:
            raw.batch_put(fruits)
            tour.step(f"batch_put({len(fruits)} fruits)", "OK")
            got = raw.batch_get([_k("fruit/apple"), _k("fruit/kiwi"), _k("fruit/nope")])
            tour.step(
                "batch_get([apple, kiwi, nope])",
                "{" + ", ".join(f"{_s(k)}: {_s(v)}" for k, v in sorted(got.items())) + "}",
            )
            pairs = raw.scan(_k("fruit/"), _k("fruit0"), limit=10)
            tour.step(f"scan({_s(_k('fruit/'))}, {_s(_k('fruit0'))}, limit=10)", "")
            table = Table("key", "value", box=None, padding=(0, 2))
            for key, value in pairs:
                table.add_row(show_bytes(key), show_bytes(value))
            tour.console.print(table)
            first_two = raw.scan(_k("fruit/"), _k("fruit0"), limit=2, reverse=True)
            tour.step("scan(..., limit=2, reverse=True)", ", ".join(_s(k) for k, _ in first_two))
            raw.delete(_k("fruit/kiwi"))
            tour.step(f"delete({_s(_k('fruit/kiwi'))}); get", _s(raw.get(_k("fruit/kiwi"))))
            checksum = raw.checksum(_k("fruit/"), _k("fruit0"))
            tour.step(
                "checksum(fruit range)",
                f"{checksum.total_kvs} pairs, {checksum.total_bytes} bytes, "
                f"crc64_xor={checksum.crc64_xor:#018x}",
            )

        _attempt(tour, "batch / scan", batch_scan)

        def ttl() -> None:
            raw.put(_k("session"), b"token-42", ttl=30)
            tour.step(f"put({_s(_k('session'))}, 'token-42', ttl=30)", "OK")
            tour.step(f"get_key_ttl({_s(_k('session'))})", f"{raw.get_key_ttl(_k('session'))} s")
            tour.step(
                f"get_key_ttl({_s(_k('greeting'))})  (no TTL)",
                f"{raw.get_key_ttl(_k('greeting'))}",
            )

        try:
            ttl()
        except TiKVError as exc:
            if "ttl" in str(exc).lower():
                tour.unavailable("TTL", f"the cluster does not enable TTLs ({exc})")
            else:
                tour.failed("TTL", exc)

    tour.section("Compare-and-swap (RawClient.connect(..., atomic=True))")
    with connect_raw(endpoints, api_version=api_version, atomic=True, timeout=timeout) as atomic:

        def cas() -> None:
            key = _k("counter")
            atomic.delete(key)
            prev, ok = atomic.compare_and_swap(key, None, b"1")
            tour.step("compare_and_swap(counter, expected=None, new='1')", f"swapped={ok}")
            prev, ok = atomic.compare_and_swap(key, b"1", b"2")
            tour.step(
                "compare_and_swap(counter, expected='1', new='2')",
                f"swapped={ok}, previous={_s(prev)}",
            )
            prev, ok = atomic.compare_and_swap(key, b"1", b"3")
            tour.step(
                "compare_and_swap(counter, expected='1', new='3')",
                f"swapped={ok}, previous={_s(prev)} (someone changed it: retry with it)",
            )
            tour.step("get(counter)", _s(atomic.get(key)))

        _attempt(tour, "compare-and-swap", cas)


_FRUITS = [
    ("apple", b"red"),
    ("banana", b"yellow"),
    ("kiwi", b"green"),
    ("plum", b"purple"),
    ("orange", b"orange"),
]


def _txn_tour(tour: _Tour, endpoints: list[str], *, api_version: int, timeout: float) -> None:
    tour.section("Transactions (TransactionClient)")
    with connect_txn(endpoints, api_version=api_version, timeout=timeout) as client:
        _attempt(tour, "commit", lambda: _txn_commit(tour, client))
        _attempt(tour, "conflict", lambda: _txn_conflict(tour, client))
        _attempt(tour, "pessimistic lock", lambda: _txn_pessimistic(tour, client))
        _attempt(tour, "snapshot read", lambda: _txn_snapshot(tour, client))


def _txn_commit(tour: _Tour, client: TransactionClient) -> None:
    alice, bob = _k("acct/alice"), _k("acct/bob")
    txn = client.begin()
    txn.put(alice, b"100")
    txn.put(bob, b"50")
    commit_ts = txn.commit()
    tour.step("begin; put(alice, '100'); put(bob, '50'); commit", f"committed at ts {commit_ts}")
    check = client.begin()
    tour.step("new txn: get(alice), get(bob)", f"{_s(check.get(alice))}, {_s(check.get(bob))}")
    check.rollback()


def _txn_conflict(tour: _Tour, client: TransactionClient) -> None:
    alice = _k("acct/alice")
    t1 = client.begin()
    t2 = client.begin()
    a1 = int(t1.get(alice) or b"0")
    a2 = int(t2.get(alice) or b"0")
    t1.put(alice, str(a1 - 30).encode())
    t2.put(alice, str(a2 + 10).encode())
    tour.step("t1 and t2 both read alice", f"{a1} and {a2}")
    tour.step("t2: alice += 10; commit", f"committed at ts {t2.commit()}")
    try:
        t1.commit()
        tour.step("t1: alice -= 30; commit", "committed (no conflict was detected!)")
    except WriteConflictError as exc:
        tour.step(
            "t1: alice -= 30; commit",
            f"[yellow]WriteConflictError[/] ({escape(_short(str(exc)))})",
            styled=True,
        )
        tour.note("a failed commit has already rolled t1 back; retry with a new transaction")
        for attempt in range(1, 6):
            retry = client.begin()
            value = int(retry.get(alice) or b"0")
            retry.put(alice, str(value - 30).encode())
            try:
                ts = retry.commit()
            except WriteConflictError:
                continue
            tour.step(
                f"t1 retries (attempt {attempt}): reads {value}, writes {value - 30}",
                f"committed at ts {ts}",
            )
            break
    final = client.begin()
    tour.step("get(alice)", _s(final.get(alice)))
    final.rollback()


def _short(text: str, limit: int = 100) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _txn_pessimistic(tour: _Tour, client: TransactionClient) -> None:
    bob = _k("acct/bob")
    txn = client.begin(pessimistic=True)
    value = txn.get_for_update(bob)
    tour.step("begin(pessimistic=True); get_for_update(bob)", f"{_s(value)} (bob is locked)")
    txn.put(bob, str(int(value or b"0") + 5).encode())
    tour.step("put(bob, bob + 5); commit", f"committed at ts {txn.commit()}")


def _txn_snapshot(tour: _Tour, client: TransactionClient) -> None:
    key = _k("acct/carol")
    first = client.begin()
    first.put(key, b"version 1")
    first.commit()
    old_ts = client.current_timestamp()
    tour.step("put(carol, 'version 1'); commit; ts = current_timestamp()", f"ts {old_ts}")
    second = client.begin()
    second.put(key, b"version 2")
    second.commit()
    tour.step("put(carol, 'version 2'); commit", "OK")
    tour.step(f"snapshot({old_ts}).get(carol)", _s(client.snapshot(old_ts).get(key)))
    now = client.begin()
    tour.step("new txn: get(carol)", _s(now.get(key)))
    now.rollback()
