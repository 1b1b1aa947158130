"""Delete range over several regions: the semantics of client-go
``integration_tests/delete_range_test.go`` on the raw client (keys ``a0``..``d9``, regions
split at ``b`` / ``c`` / ``d``, then ranges that cross, touch and miss the boundaries;
after each delete the store holds exactly the model's keys).
"""

from __future__ import annotations

import random

from tikv_mockstore import MockCluster
from tikv_raw import RawClient, prefix_range


def _check(raw: RawClient, prefix: bytes, model: dict[bytes, bytes]) -> None:
    assert dict(raw.scan(*prefix_range(prefix), limit=1000)) == model


def _delete(
    raw: RawClient, prefix: bytes, model: dict[bytes, bytes], start: bytes, end: bytes | None
) -> None:
    lo = prefix + start
    hi = prefix + end if end is not None else prefix_range(prefix)[1]
    raw.delete_range(lo, hi)
    for key in [k for k in model if lo <= k and (hi is None or k < hi)]:
        del model[key]
    _check(raw, prefix, model)


def test_delete_range(raw: RawClient, prefix: bytes, embedded: MockCluster | None) -> None:
    rng = random.Random(1)
    model = {
        prefix + bytes([i, j]): bytes([rng.randrange(256), rng.randrange(256)])
        for i in b"abcd"
        for j in b"0123456789"
    }
    raw.batch_put(model)
    if embedded is not None:
        embedded.split([prefix + b"b", prefix + b"c", prefix + b"d"])
    _check(raw, prefix, model)
    _delete(raw, prefix, model, b"b", b"c0")  # two regions
    _delete(raw, prefix, model, b"d0\0", b"d1\0")  # exactly d1
    _delete(raw, prefix, model, b"c5", b"d5")  # across a boundary
    _delete(raw, prefix, model, b"a", b"z")  # everything left
    assert model == {}
    raw.batch_put({prefix + b"a1": b"x", prefix + b"d9": b"y"})
    model = {prefix + b"a1": b"x", prefix + b"d9": b"y"}
    _delete(raw, prefix, model, b"", None)  # the whole prefix (client-go: nil, nil)
    assert model == {}
