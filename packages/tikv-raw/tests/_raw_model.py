"""A hypothesis state machine: random raw operations checked against a dict model.

Region splits are injected between operations, so routing and region walks are exercised
while the layout changes. The machine is parametrised by an environment that supplies a
blocking client, a split function and a key prefix, so it runs against the pipeline double
and against the mock cluster alike.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule
from tikv_raw import RawClient

KEYS = st.lists(st.sampled_from([b"a", b"b", b"c", b"x", b"\x00", b"\xff"]), max_size=3).map(
    b"".join
)
VALUES = st.binary(max_size=4)


@dataclass
class RawEnv:
    """What the machine needs: a client, a way to split regions, and a key prefix."""

    client: RawClient
    split: Callable[[bytes], object]
    prefix: bytes
    close: Callable[[], None] | None = None


def make_machine(new_env: Callable[[], RawEnv]) -> type[RuleBasedStateMachine]:
    """Build a state machine class whose every run starts with ``new_env()``."""

    class RawModel(RuleBasedStateMachine):
        def __init__(self) -> None:
            super().__init__()
            self.env = new_env()
            self.c = self.env.client
            self.p = self.env.prefix
            self.model: dict[bytes, bytes] = {}

        def k(self, key: bytes) -> bytes:
            return self.p + key

        def model_range(
            self, start: bytes, end: bytes | None, limit: int, reverse: bool
        ) -> list[tuple[bytes, bytes]]:
            keys = sorted(k for k in self.model if k >= start and (end is None or k < end))
            if reverse:
                keys.reverse()
            return [(self.k(k), self.model[k]) for k in keys[:limit]]

        @rule(key=KEYS, value=VALUES)
        def put(self, key: bytes, value: bytes) -> None:
            self.c.put(self.k(key), value)
            self.model[key] = value

        @rule(key=KEYS)
        def delete(self, key: bytes) -> None:
            self.c.delete(self.k(key))
            self.model.pop(key, None)

        @rule(pairs=st.dictionaries(KEYS, VALUES, max_size=6))
        def batch_put(self, pairs: dict[bytes, bytes]) -> None:
            self.c.batch_put({self.k(k): v for k, v in pairs.items()})
            self.model.update(pairs)

        @rule(keys=st.lists(KEYS, max_size=6))
        def batch_delete(self, keys: list[bytes]) -> None:
            self.c.batch_delete([self.k(k) for k in keys])
            for key in keys:
                self.model.pop(key, None)

        @rule(a=KEYS, b=KEYS)
        def delete_range(self, a: bytes, b: bytes) -> None:
            lo, hi = min(a, b), max(a, b)
            if lo == hi:
                return
            self.c.delete_range(self.k(lo), self.k(hi))
            for key in [k for k in self.model if lo <= k < hi]:
                del self.model[key]

        @rule(key=KEYS)
        def get(self, key: bytes) -> None:
            assert self.c.get(self.k(key)) == self.model.get(key)

        @rule(keys=st.lists(KEYS, max_size=6))
        def batch_get(self, keys: list[bytes]) -> None:
            want = {self.k(k): self.model[k] for k in keys if k in self.model}
            assert self.c.batch_get([self.k(k) for k in keys]) == want

        @rule(
            a=KEYS,
            b=st.one_of(st.none(), KEYS),
            limit=st.integers(1, 8),
            reverse=st.booleans(),
        )
        def scan(self, a: bytes, b: bytes | None, limit: int, reverse: bool) -> None:
            if b is not None and b < a:
                a, b = b, a
            end = None if b is None else self.k(b)
            got = self.c.scan(self.k(a), end, limit=limit, reverse=reverse)
            assert got == self.model_range(a, b, limit, reverse)

        @rule(key=KEYS)
        def split(self, key: bytes) -> None:
            self.env.split(self.k(key) + b"\x01")

        @precondition(lambda self: len(self.model) > 0)
        @rule(reverse=st.booleans())
        def scan_iter_everything(self, reverse: bool) -> None:
            end = _prefix_end(self.p)
            got = list(self.c.scan_iter(self.p, end, reverse=reverse, page_size=3))
            assert got == self.model_range(b"", None, len(self.model), reverse)

        @invariant()
        def checksum_counts_match(self) -> None:
            check = self.c.checksum(self.p, _prefix_end(self.p))
            assert check.total_kvs == len(self.model)

        def teardown(self) -> None:
            try:
                self.c.delete_range(self.p, _prefix_end(self.p))
            finally:
                if self.env.close is not None:
                    self.env.close()

    return RawModel


def _prefix_end(prefix: bytes) -> bytes | None:
    trimmed = prefix.rstrip(b"\xff")
    if not trimmed:
        return None
    return trimmed[:-1] + bytes([trimmed[-1] + 1])
