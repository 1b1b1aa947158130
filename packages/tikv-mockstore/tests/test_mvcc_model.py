"""Model-based property tests: the engine against a simple reference model of commits.

The reference model is a list of committed versions per key. A hypothesis state machine
runs interleaved optimistic transactions (2PC, async commit and 1PC) and checks:

- snapshot reads see exactly the commits at or below their ts (or are blocked by a lock
  of a transaction that is prewritten and not yet decided);
- reads are repeatable: a value read at ts stays the value at ts, whatever commits later
  (this is what max_ts guarantees for async commit and 1PC);
- no lost update: two committed transactions writing the same key never overlap
  (one commits before the other starts);
- a transaction rolled back can never prewrite again.
"""

from __future__ import annotations

import itertools
import random
import threading
from dataclasses import dataclass, field

import hypothesis.strategies as st
import pytest
from hypothesis import HealthCheck, settings
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule
from tikv_mockstore.mvcc import (
    Action,
    KeyIsLockedError,
    Mutation,
    MvccEngine,
    WriteConflictError,
)

KEYS = [b"a", b"b", b"c", b"d"]


@dataclass
class Txn:
    start_ts: int
    writes: dict[bytes, bytes | None]
    mode: str  # "2pc", "async", "1pc"
    prewritten: bool = False
    min_commit_ts: int = 0

    @property
    def primary(self) -> bytes:
        return min(self.writes)

    def mutations(self) -> list[Mutation]:
        return [
            Mutation.put(k, v) if v is not None else Mutation.delete(k)
            for k, v in sorted(self.writes.items())
        ]


@dataclass
class Model:
    versions: dict[bytes, list[tuple[int, bytes | None]]] = field(default_factory=dict)
    committed: list[tuple[int, int, frozenset[bytes]]] = field(default_factory=list)

    def commit(self, txn: Txn, commit_ts: int) -> None:
        for k, v in txn.writes.items():
            self.versions.setdefault(k, []).append((commit_ts, v))
        self.committed.append((txn.start_ts, commit_ts, frozenset(txn.writes)))

    def read(self, key: bytes, ts: int) -> bytes | None:
        best: tuple[int, bytes | None] | None = None
        for c, v in self.versions.get(key, []):
            if c <= ts and (best is None or c > best[0]):
                best = (c, v)
        return None if best is None else best[1]


class MvccMachine(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.engine = MvccEngine()
        self.model = Model()
        self.clock = 100
        self.active: list[Txn] = []
        self.observed: list[tuple[bytes, int, bytes | None]] = []

    def tick(self) -> int:
        self.clock += 1
        return self.clock

    # ----------------------------------------------------------------- rules

    @rule(
        keys=st.lists(st.sampled_from(KEYS), min_size=1, max_size=3, unique=True),
        values=st.lists(st.one_of(st.none(), st.binary(min_size=1, max_size=3)), min_size=3),
        mode=st.sampled_from(["2pc", "2pc", "async", "1pc"]),
    )
    def begin(self, keys: list[bytes], values: list[bytes | None], mode: str) -> None:
        writes = {k: values[i] for i, k in enumerate(keys)}
        self.active.append(Txn(self.tick(), writes, mode))

    @precondition(lambda self: any(not t.prewritten for t in self.active))
    @rule(data=st.data())
    def prewrite(self, data: st.DataObject) -> None:
        txn = data.draw(st.sampled_from([t for t in self.active if not t.prewritten]))
        secondaries = [k for k in sorted(txn.writes) if k != txn.primary]
        try:
            res = self.engine.prewrite(
                txn.mutations(),
                txn.primary,
                txn.start_ts,
                3000,
                use_async_commit=txn.mode == "async",
                secondaries=secondaries if txn.mode == "async" else (),
                try_one_pc=txn.mode == "1pc",
            )
        except WriteConflictError as e:
            assert e.conflict_commit_ts > txn.start_ts or e.conflict_commit_ts == txn.start_ts
            self._rollback(txn)
            return
        if res.locks:
            for lk in res.locks:
                assert isinstance(lk, KeyIsLockedError)
                assert lk.lock_info.lock_version != txn.start_ts
            assert res.one_pc_commit_ts == 0
            self._rollback(txn)
            return
        if txn.mode == "1pc":
            assert res.one_pc_commit_ts > txn.start_ts
            self.model.commit(txn, res.one_pc_commit_ts)
            self.clock = max(self.clock, res.one_pc_commit_ts)
            self.active.remove(txn)
            return
        if txn.mode == "async":
            assert res.min_commit_ts > txn.start_ts
            txn.min_commit_ts = res.min_commit_ts
        txn.prewritten = True

    @precondition(lambda self: any(t.prewritten for t in self.active))
    @rule(data=st.data())
    def commit(self, data: st.DataObject) -> None:
        txn = data.draw(st.sampled_from([t for t in self.active if t.prewritten]))
        # An async-commit transaction commits at its min_commit_ts; 2PC at a fresh ts.
        commit_ts = txn.min_commit_ts if txn.mode == "async" else self.tick()
        keys = sorted(txn.writes, key=lambda k: k != txn.primary)  # primary first
        for k in keys:
            self.engine.commit([k], txn.start_ts, commit_ts)
        self.clock = max(self.clock, commit_ts)
        self.model.commit(txn, commit_ts)
        self.active.remove(txn)

    @precondition(lambda self: any(t.prewritten for t in self.active))
    @rule(data=st.data())
    def crash_and_resolve(self, data: st.DataObject) -> None:
        """The owner dies after prewrite (maybe after committing the primary); a reader
        whose clock is past the lock TTL resolves the transaction, as a lock resolver does.
        """
        txn = data.draw(st.sampled_from([t for t in self.active if t.prewritten]))
        self.active.remove(txn)
        secondaries = sorted(k for k in txn.writes if k != txn.primary)
        primary_committed = txn.mode == "2pc" and data.draw(st.booleans())
        if primary_committed:
            commit_ts = self.tick()
            self.engine.commit([txn.primary], txn.start_ts, commit_ts)
        # Time passes beyond the 3000 ms TTL.
        now = ((self.clock >> 18) + 3001) << 18
        self.clock = now
        status = self.engine.check_txn_status(
            txn.primary, txn.start_ts, now, now, rollback_if_not_exist=True
        )
        if txn.mode == "2pc":
            if primary_committed:
                assert status.commit_version == commit_ts
                self.engine.resolve_lock(txn.start_ts, commit_ts)
                self.model.commit(txn, commit_ts)
            else:
                assert status.action is Action.TTL_EXPIRE_ROLLBACK
                self.engine.resolve_lock(txn.start_ts, 0)
                with pytest.raises(WriteConflictError):
                    self.engine.prewrite(txn.mutations(), txn.primary, txn.start_ts, 3000)
            return
        # Async commit: the primary lock stays; the secondaries decide.
        assert status.lock_ttl > 0
        assert status.lock_info is not None and status.lock_info.use_async_commit
        sec = self.engine.check_secondary_locks(secondaries, txn.start_ts)
        assert sec.commit_ts == 0
        assert len(sec.locks) == len(secondaries)
        commit_ts = max([status.lock_info.min_commit_ts, *(li.min_commit_ts for li in sec.locks)])
        assert commit_ts == txn.min_commit_ts
        self.engine.resolve_lock(txn.start_ts, commit_ts)
        self.model.commit(txn, commit_ts)

    @precondition(lambda self: bool(self.active))
    @rule(data=st.data())
    def rollback(self, data: st.DataObject) -> None:
        txn = data.draw(st.sampled_from(self.active))
        self._rollback(txn)

    def _rollback(self, txn: Txn) -> None:
        # The primary gets a protected rollback (Cleanup), the others BatchRollback: a
        # non-protected rollback may be collapsed or dropped, the primary's never is.
        self.engine.cleanup(txn.primary, txn.start_ts, 0)
        secondaries = sorted(k for k in txn.writes if k != txn.primary)
        if secondaries:
            self.engine.batch_rollback(secondaries, txn.start_ts)
        if txn in self.active:
            self.active.remove(txn)
        # A late (retried) prewrite of a rolled-back transaction never succeeds.
        try:
            res = self.engine.prewrite(txn.mutations(), txn.primary, txn.start_ts, 3000)
        except WriteConflictError:
            pass
        else:
            assert res.locks, "a rolled-back transaction prewrote again"

    @rule(key=st.sampled_from(KEYS), back=st.integers(min_value=0, max_value=30))
    def read(self, key: bytes, back: int) -> None:
        ts = max(1, self.clock - back)
        try:
            value = self.engine.get(key, ts)
        except KeyIsLockedError as e:
            holder = [t for t in self.active if t.start_ts == e.lock_info.lock_version]
            assert holder, "blocked by a lock of no live transaction"
            txn = holder[0]
            assert txn.prewritten and key in txn.writes and txn.start_ts <= ts
            return
        assert value == self.model.read(key, ts)
        self.observed.append((key, ts, value))

    # ----------------------------------------------------------------- invariants

    @invariant()
    def reads_are_repeatable(self) -> None:
        for key, ts, value in self.observed[-40:]:
            assert self.model.read(key, ts) == value

    @invariant()
    def no_lost_update(self) -> None:
        c = self.model.committed
        for i in range(len(c)):
            s1, c1, k1 = c[i]
            for j in range(i + 1, len(c)):
                s2, c2, k2 = c[j]
                if k1 & k2:
                    assert c1 <= s2 or c2 <= s1, f"overlapping writers {c[i]} and {c[j]}"

    @invariant()
    def locks_belong_to_live_prewritten_txns(self) -> None:
        live = {t.start_ts for t in self.active if t.prewritten}
        for info in self.engine.scan_lock(2**64 - 1):
            assert info.lock_version in live


MvccMachine.TestCase.settings = settings(
    max_examples=60,
    stateful_step_count=30,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)
TestMvccModel = MvccMachine.TestCase


def test_concurrent_transfers_preserve_the_total() -> None:
    """Threads run optimistic transfers; conflicts abort, the total balance never changes."""
    engine = MvccEngine()
    accounts = [f"acct{i}".encode() for i in range(5)]
    ts_lock = threading.Lock()
    counter = itertools.count(10)

    def next_ts() -> int:
        with ts_lock:
            return next(counter)

    init = next_ts()
    engine.prewrite([Mutation.put(a, b"100") for a in accounts], accounts[0], init, 3000)
    engine.commit(accounts, init, next_ts())
    committed = [0]
    errors: list[BaseException] = []

    def worker(seed: int) -> None:
        rng = random.Random(seed)
        try:
            for _ in range(150):
                src, dst = rng.sample(accounts, 2)
                start = next_ts()
                try:
                    a = int(engine.get(src, start) or b"0")
                    b = int(engine.get(dst, start) or b"0")
                except KeyIsLockedError:
                    continue
                muts = [
                    Mutation.put(src, str(a - 1).encode()),
                    Mutation.put(dst, str(b + 1).encode()),
                ]
                try:
                    res = engine.prewrite(muts, src, start, 3000)
                except WriteConflictError:
                    engine.cleanup(src, start, 0)
                    engine.batch_rollback([dst], start)
                    continue
                if res.locks:
                    engine.cleanup(src, start, 0)
                    engine.batch_rollback([dst], start)
                    continue
                commit_ts = next_ts()
                engine.commit([src], start, commit_ts)
                engine.commit([dst], start, commit_ts)
                with ts_lock:
                    committed[0] += 1
        except BaseException as e:  # surfaced by the assertion below
            errors.append(e)

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert errors == []
    final = next_ts()
    total = sum(int(engine.get(a, final) or b"0") for a in accounts)
    assert total == 500
    assert committed[0] > 0
    assert engine.lock_count() == 0
