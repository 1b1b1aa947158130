"""Tests of the transaction write buffer, porting client-go's memdb_test.go semantics."""

from __future__ import annotations

import struct

import pytest
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    invariant,
    precondition,
    rule,
)
from tikv_pd.errors import TxnTooLargeError
from tikv_txn.membuffer import (
    DEFAULT_ENTRY_SIZE_LIMIT,
    DEFAULT_TOTAL_SIZE_LIMIT,
    MAX_KEY_LEN,
    PERSISTENT_FLAGS,
    TOMBSTONE,
    FlagsOp,
    KeyFlags,
    MemBuffer,
    MemEntry,
    apply_flags_ops,
)


def k4(i: int) -> bytes:
    return struct.pack(">I", i)


def fill(db: MemBuffer, start: int, end: int, delta: int) -> int:
    """client-go deriveAndFill: open a staging buffer and write key i -> i + delta."""
    h = db.staging()
    for i in range(start, end):
        db.set(k4(i), k4(i + delta))
    return h


# ---------------------------------------------------------------------------- basics


def test_get_set_and_absent() -> None:
    db = MemBuffer()
    for i in range(1000):
        db.set(k4(i), k4(i))
    assert len(db) == 1000
    assert db.size == 8000
    assert all(db.get(k4(i)) == k4(i) for i in range(1000))
    assert db.get(b"nope") is None
    assert db.get_flags(b"nope") is None
    assert db.get_flags(k4(1)) == KeyFlags(0)
    assert db.dirty


def test_tombstone_is_distinct_from_absent() -> None:
    db = MemBuffer()
    db.set(b"a", b"1")
    db.delete(b"a")
    db.delete(b"b")
    assert db.get(b"a") is TOMBSTONE
    assert db.get(b"b") is TOMBSTONE
    assert db.get(b"c") is None
    assert not TOMBSTONE
    assert list(db.iterate()) == [(b"a", TOMBSTONE), (b"b", TOMBSTONE)]
    # Size counts keys of tombstones, not a value.
    assert db.size == 2


def test_empty_value_rejected() -> None:
    db = MemBuffer()
    with pytest.raises(ValueError, match="empty value"):
        db.set(b"k", b"")
    assert len(db) == 0


@pytest.mark.parametrize("bad", ["str", 1, bytearray(b"x"), None])
def test_bad_key_types(bad: object) -> None:
    db = MemBuffer()
    with pytest.raises(TypeError, match="keys must be bytes"):
        db.set(bad, b"v")  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="keys must be bytes"):
        db.get(bad)  # type: ignore[arg-type]


def test_bad_value_and_op_types() -> None:
    db = MemBuffer()
    with pytest.raises(TypeError, match="values must be bytes"):
        db.set(b"k", "v")  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="FlagsOp"):
        db.update_flags(b"k", 3)  # type: ignore[arg-type]
    assert len(db) == 0
    with pytest.raises(TypeError, match="start must be bytes"):
        db.iterate("a")  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="end must be bytes"):
        db.iterate_with_flags(None, 5)  # type: ignore[arg-type]


def test_key_value_oversize() -> None:
    # client-go TestKeyValueOversize: a key of MaxUint16 bytes is fine, one more is not.
    db = MemBuffer(entry_size_limit=1 << 20)
    key = bytes(MAX_KEY_LEN)
    db.set(key, bytes(MAX_KEY_LEN + 1))
    with pytest.raises(ValueError, match="longer than the maximum"):
        db.set(bytes(MAX_KEY_LEN + 1), key)


def test_default_limits() -> None:
    db = MemBuffer()
    assert db.entry_size_limit == DEFAULT_ENTRY_SIZE_LIMIT == 6 * 1024 * 1024
    assert db.total_size_limit == DEFAULT_TOTAL_SIZE_LIMIT == 100 * 1024 * 1024
    with pytest.raises(ValueError, match="positive"):
        MemBuffer(entry_size_limit=0)
    with pytest.raises(TypeError, match="int"):
        MemBuffer(total_size_limit=1.5)  # type: ignore[arg-type]


def test_buffer_limit() -> None:
    # client-go TestBufferLimit, with the error raised before anything changes.
    db = MemBuffer(entry_size_limit=500, total_size_limit=1000)
    with pytest.raises(TxnTooLargeError) as info:
        db.set(b"x", bytes(500))
    assert (info.value.kind, info.value.size, info.value.limit, info.value.key) == (
        "entry",
        501,
        500,
        b"x",
    )
    assert len(db) == 0 and db.size == 0

    db.set(b"x", bytes(499))
    with pytest.raises(TxnTooLargeError) as info:
        db.set(b"yz", bytes(499))  # entry: 501 > 500
    assert info.value.kind == "entry"
    db.set(b"y", bytes(499))  # exactly at both limits
    assert db.size == 1000
    with pytest.raises(TxnTooLargeError) as info:
        db.set(b"z", b"1")
    assert (info.value.kind, info.value.size, info.value.limit) == ("total", 1002, 1000)
    assert db.get(b"z") is None and len(db) == 2 and db.size == 1000
    # Overwriting with a smaller value always fits, even at the limit.
    db.set(b"y", b"1")
    assert db.size == 502

    db.delete(bytes(497))
    assert db.size == 999
    with pytest.raises(TxnTooLargeError):
        db.delete(bytes(500))
    with pytest.raises(TxnTooLargeError):
        db.delete(bytes(2))
    # A flags-only entry for a new key counts its key against the total.
    db.set_size_limits(500, 999)
    with pytest.raises(TxnTooLargeError):
        db.update_flags(b"q", FlagsOp.SET_KEY_LOCKED)
    assert db.get_flags(b"q") is None


def test_overwrite_keeps_len_and_size() -> None:
    # client-go TestOverwrite.
    db = MemBuffer()
    for i in range(1000):
        db.set(k4(i), k4(i))
    size = db.size
    for i in range(0, 1000, 3):
        db.set(k4(i), k4(i * 10))
    assert len(db) == 1000 and db.size == size
    for i in range(1000):
        assert db.get(k4(i)) == (k4(i * 10) if i % 3 == 0 else k4(i))
    got = [struct.unpack(">I", v)[0] for _, v in db.iterate(reverse=True)]  # type: ignore[arg-type]
    assert got == [i * 10 if i % 3 == 0 else i for i in reversed(range(1000))]


# ---------------------------------------------------------------------------- iteration


def test_iterate_bounds_forward_and_reverse() -> None:
    db = MemBuffer()
    for i in range(0, 100, 2):
        db.set(k4(i), k4(i))
    fwd = [k for k, _ in db.iterate(k4(11), k4(21))]
    assert fwd == [k4(i) for i in (12, 14, 16, 18, 20)]
    rev = [k for k, _ in db.iterate(k4(11), k4(20), reverse=True)]
    assert rev == [k4(i) for i in (18, 16, 14, 12)]
    assert [k for k, _ in db.iterate(None, k4(3))] == [k4(0), k4(2)]
    assert [k for k, _ in db.iterate(k4(97), None)] == [k4(98)]
    assert [k for k, _ in db.iterate(k4(97), b"", reverse=True)] == [k4(98)]
    assert len(list(db.iterate())) == 50
    assert next(k for k, _ in db.iterate(reverse=True)) == k4(98)


def test_iterate_no_result() -> None:
    # client-go TestIterNoResult.
    db = MemBuffer()
    db.set(b"\x01\x01", b"\x01\x01")
    for lo, hi in [
        (b"\x01\x01", b"\x01\x01"),
        (b"\x00\x01", b"\x00\x01"),
        (b"\x01", b"\x01\x00\x01"),
        (b"\x01\x00\x01", b"\x01\x01"),
        (b"\x01\x02", b"\x01\x01"),
    ]:
        assert list(db.iterate(lo, hi)) == []
        assert list(db.iterate(lo, hi, reverse=True)) == []


def test_iterate_skips_flags_only_but_iterate_with_flags_shows_them() -> None:
    db = MemBuffer()
    db.update_flags(b"a", FlagsOp.SET_KEY_LOCKED)
    db.set(b"b", b"2", FlagsOp.SET_PRESUME_KEY_NOT_EXISTS)
    db.delete(b"c")
    assert list(db.iterate()) == [(b"b", b"2"), (b"c", TOMBSTONE)]
    entries = list(db.iterate_with_flags())
    assert entries == [
        MemEntry(b"a", None, KeyFlags.KEY_LOCKED),
        MemEntry(b"b", b"2", KeyFlags.PRESUME_KNE | KeyFlags.NEED_CHECK_EXISTS),
        MemEntry(b"c", TOMBSTONE, KeyFlags(0)),
    ]
    assert [e.key for e in db.iterate_with_flags(reverse=True)] == [b"c", b"b", b"a"]
    assert list(db.keys(b"b")) == [b"b", b"c"]
    assert b"a" in db and b"z" not in db


def test_iterate_sees_writes_made_during_iteration() -> None:
    db = MemBuffer()
    for i in range(0, 3000, 2):
        db.set(k4(i), b"v")
    seen = []
    for key, _ in db.iterate():
        seen.append(key)
        i = struct.unpack(">I", key)[0]
        if i < 3000 and i % 4 == 0:
            db.set(k4(i + 1), b"w")  # ahead of the cursor: must be seen
            db.set(k4(i + 3000), b"x")  # far ahead: must be seen once
    assert seen == sorted(set(seen))
    assert k4(1) in seen and k4(3000) in seen
    assert len(seen) == len(db)

    seen_rev = []
    for key, _ in db.iterate(reverse=True):
        seen_rev.append(key)
        if len(seen_rev) == 10:
            db.set(b"\x00", b"first")
    assert seen_rev == sorted(set(seen_rev), reverse=True)
    assert seen_rev[-1] == b"\x00"


def test_large_interleaved_ordering() -> None:
    # Many chunks: keys inserted in a scrambled order come back sorted.
    db = MemBuffer()
    order = [(i * 7919) % 20000 for i in range(20000)]
    for n, i in enumerate(order):
        db.set(k4(i), k4(i))
        if n % 5000 == 0:
            assert next(db.iterate(k4(i)))[0] == k4(i)
    assert [k for k, _ in db.iterate()] == [k4(i) for i in range(20000)]
    assert [k for k, _ in db.iterate(reverse=True)] == [k4(i) for i in reversed(range(20000))]
    assert [k for k, _ in db.iterate(k4(4095), k4(4099), reverse=True)] == [
        k4(i) for i in (4098, 4097, 4096, 4095)
    ]


def test_keys_sharing_prefixes_order_like_bytes() -> None:
    # What client-go's ART node tests (node prefix, longest common prefix, ordered and
    # grown children, minimum node, key-to-chunk) guarantee, observed on the buffer: keys
    # that are prefixes of others, long shared prefixes, every possible next byte after
    # one prefix (a node grown from 4 to 256 children), 0x00 / 0xff bytes and the empty
    # suffix all iterate in plain bytes order, forwards and backwards, and survive
    # deletes and overwrites in the middle of such a family.
    long_prefix = b"p" * 40
    keys = {
        b"\x00",
        b"\x00\x00",
        b"\xff",
        b"\xff\xff\xff",
        b"a",
        b"ab",
        b"abc",
        b"abcd",
        b"abd",
        long_prefix,
        long_prefix + b"\x00",
        long_prefix + b"q" * 40,
        long_prefix + b"q" * 39 + b"r",
    }
    keys.update(b"fan" + bytes([i]) for i in range(256))
    keys.update(b"fan" + bytes([i]) + b"x" for i in range(0, 256, 17))
    db = MemBuffer()
    for key in sorted(keys, key=lambda k: (len(k) * 7919 + sum(k)) % 65521):
        db.set(key, key[::-1] or b"-")
    expected = sorted(keys)
    assert [k for k, _ in db.iterate()] == expected
    assert [k for k, _ in db.iterate(reverse=True)] == expected[::-1]
    # Bounds that fall inside a shared prefix.
    assert [k for k, _ in db.iterate(b"ab", b"abd")] == [b"ab", b"abc", b"abcd"]
    assert [k for k, _ in db.iterate(b"fan\x10", b"fan\x12")] == [
        b"fan\x10",
        b"fan\x11",
        b"fan\x11x",
    ]
    # ... and bounds that end inside one: "q"*39 + "r" sorts after "q"*40.
    assert [k for k, _ in db.iterate(long_prefix, long_prefix + b"q" * 40, reverse=True)] == [
        long_prefix + b"\x00",
        long_prefix,
    ]
    assert [k for k, _ in db.iterate(long_prefix + b"q", None)][:2] == [
        long_prefix + b"q" * 40,
        long_prefix + b"q" * 39 + b"r",
    ]
    # Removing the node a family hangs off (a prefix key) keeps its descendants.
    for key in (b"ab", b"fan\x00", b"fan\xff", long_prefix):
        db.delete(key)
    db.set(b"abc", b"new")
    live = [k for k, v in db.iterate() if v != TOMBSTONE]
    assert live == [k for k in expected if k not in {b"ab", b"fan\x00", b"fan\xff", long_prefix}]
    assert db.get(b"abc") == b"new"
    assert db.get(b"abcd") == b"dcba"
    assert db.get(long_prefix + b"\x00") == (long_prefix + b"\x00")[::-1]


def test_big_values_are_stored_whole_and_reverted() -> None:
    # client-go arena TestBigValue / TestValueLargeThanBlock: the value log holds values
    # larger than its block size (up to the entry limit), a checkpoint revert drops a big
    # value again, and a value over the limit is refused. In Python values are kept
    # whole (no blocks), so what is left to check is that big values round-trip exactly,
    # the size accounting follows them through a revert, and the limit is enforced first.
    big, bigger = 80 << 20, 127 << 20
    db = MemBuffer(entry_size_limit=bigger + 16, total_size_limit=(big + bigger) * 2)
    first = bytes(range(256)) * (big // 256)
    db.set(b"k0", first)
    assert db.get(b"k0") == first and db.size == 2 + big
    cp = db.checkpoint()
    db.set(b"k1", b"\x01" * bigger)
    assert db.size == 4 + big + bigger
    db.revert_to_checkpoint(cp)
    assert db.get(b"k1") is None
    assert db.get(b"k0") == first and db.size == 2 + big and len(db) == 1
    with pytest.raises(TxnTooLargeError) as info:
        db.set(b"k2", bytes(bigger + 16))
    assert info.value.kind == "entry"
    assert db.get(b"k2") is None and db.size == 2 + big
    # Small values after a big one (the block-size change in client-go's vlog) stay exact.
    db.set(b"k3", b"x")
    db.set(b"k4", bytes(4096))
    db.set(b"k5", b"y" * 3000)
    assert db.get(b"k5") == b"y" * 3000 and db.get(b"k4") == bytes(4096)


# ---------------------------------------------------------------------------- flags


def test_apply_flags_ops_rules() -> None:
    f = apply_flags_ops(0, [FlagsOp.SET_PRESUME_KEY_NOT_EXISTS])
    assert f.has_presume_key_not_exists and f.has_need_check_exists
    f = apply_flags_ops(f, [FlagsOp.DEL_NEED_CHECK_EXISTS])
    assert f.has_presume_key_not_exists and not f.has_need_check_exists
    assert not apply_flags_ops(f, [FlagsOp.DEL_PRESUME_KEY_NOT_EXISTS]).has_presume_key_not_exists
    assert apply_flags_ops(0, [FlagsOp.SET_PREVIOUS_PRESUME_KNE]).has_presume_key_not_exists

    f = apply_flags_ops(0, [FlagsOp.SET_ASSERT_EXIST])
    assert f.has_assert_exist and not f.has_assert_not_exist and f.has_assertion_flags
    f = apply_flags_ops(f, [FlagsOp.SET_ASSERT_NOT_EXIST])
    assert f.has_assert_not_exist and not f.has_assert_exist
    f = apply_flags_ops(f, [FlagsOp.SET_ASSERT_UNKNOWN])
    assert f.has_assert_unknown and not f.has_assert_exist and not f.has_assert_not_exist
    f = apply_flags_ops(f, [FlagsOp.SET_ASSERT_NONE])
    assert not f.has_assertion_flags

    f = apply_flags_ops(
        0, [FlagsOp.SET_NEED_CONSTRAINT_CHECK_IN_PREWRITE, FlagsOp.SET_KEY_LOCKED_VALUE_EXISTS]
    )
    assert f.has_locked_value_exists and not f.has_need_constraint_check_in_prewrite
    f = apply_flags_ops(
        f, [FlagsOp.SET_NEED_CONSTRAINT_CHECK_IN_PREWRITE, FlagsOp.SET_KEY_LOCKED_VALUE_NOT_EXISTS]
    )
    assert not f.has_locked_value_exists and not f.has_need_constraint_check_in_prewrite

    f = apply_flags_ops(0, [FlagsOp.SET_KEY_LOCKED, FlagsOp.SET_KEY_LOCKED_IN_SHARE_MODE])
    assert f.has_locked and f.has_locked_in_share_mode
    f = apply_flags_ops(f, [FlagsOp.SET_KEY_LOCKED_IN_EXCLUSIVE_MODE, FlagsOp.DEL_KEY_LOCKED])
    assert not f.has_locked and not f.has_locked_in_share_mode
    f = apply_flags_ops(
        0,
        [
            FlagsOp.SET_NEED_LOCKED,
            FlagsOp.SET_PREWRITE_ONLY,
            FlagsOp.SET_IGNORED_IN_2PC,
            FlagsOp.SET_READABLE,
            FlagsOp.SET_NEWLY_INSERTED,
        ],
    )
    assert f.has_need_locked and f.has_prewrite_only and f.has_ignored_in_2pc
    assert f.has_readable and f.has_newly_inserted
    assert not apply_flags_ops(f, [FlagsOp.DEL_NEED_LOCKED]).has_need_locked
    assert f.and_persistent() == KeyFlags(0)
    assert KeyFlags.KEY_LOCKED.and_persistent() == KeyFlags.KEY_LOCKED
    assert PERSISTENT_FLAGS == (
        KeyFlags.KEY_LOCKED
        | KeyFlags.KEY_LOCKED_VAL_EXIST
        | KeyFlags.NEED_CONSTRAINT_CHECK_IN_PREWRITE
        | KeyFlags.KEY_LOCKED_IN_SHARE_MODE
    )


def test_set_value_clears_constraint_check_flag() -> None:
    # client-go TestUnsetTemporaryFlag.
    db = MemBuffer()
    db.set(b"\x01", b"\x02", FlagsOp.SET_NEED_CONSTRAINT_CHECK_IN_PREWRITE)
    assert db.get_flags(b"\x01") == KeyFlags.NEED_CONSTRAINT_CHECK_IN_PREWRITE
    db.set(b"\x01", b"\x02")
    assert not db.get_flags(b"\x01").has_need_constraint_check_in_prewrite  # type: ignore[union-attr]
    # A flags-only update keeps it.
    db.update_flags(b"\x03", FlagsOp.SET_NEED_CONSTRAINT_CHECK_IN_PREWRITE)
    db.update_flags(b"\x03", FlagsOp.SET_KEY_LOCKED)
    assert db.get_flags(b"\x03") == (
        KeyFlags.NEED_CONSTRAINT_CHECK_IN_PREWRITE | KeyFlags.KEY_LOCKED
    )


def test_clearing_all_flags_of_a_lock_only_entry_removes_it() -> None:
    db = MemBuffer()
    db.update_flags(b"a", FlagsOp.SET_KEY_LOCKED)
    db.update_flags(b"b")
    assert len(db) == 1 and b"b" not in db
    db.update_flags(b"a", FlagsOp.DEL_KEY_LOCKED)
    assert len(db) == 0 and db.size == 0 and list(db.keys()) == []
    db.set(b"c", b"1", FlagsOp.SET_KEY_LOCKED)
    db.update_flags(b"c", FlagsOp.DEL_KEY_LOCKED)
    assert db.get_entry(b"c") == MemEntry(b"c", b"1", KeyFlags(0))


def test_flags_only_entries_count_in_len_and_size() -> None:
    db = MemBuffer()
    db.update_flags(b"abcd", FlagsOp.SET_KEY_LOCKED)
    assert len(db) == 1 and db.size == 4
    assert db.get(b"abcd") is None
    assert db.get_entry(b"abcd") == MemEntry(b"abcd", None, KeyFlags.KEY_LOCKED)
    db.set(b"abcd", b"xy")
    assert len(db) == 1 and db.size == 6
    assert db.get_entry(b"abcd") == MemEntry(b"abcd", b"xy", KeyFlags.KEY_LOCKED)
    assert db.get_entry(b"zz") is None


# ---------------------------------------------------------------------------- staging


def test_staging_basic() -> None:
    # client-go TestMemDBStaging.
    db = MemBuffer()
    db.set(b"x", bytes(2))
    h1 = db.staging()
    db.set(b"x", bytes(3))
    h2 = db.staging()
    db.set(b"yz", bytes(1))
    assert db.get(b"x") == bytes(3)
    db.release(h2)
    assert db.get(b"yz") == bytes(1)
    db.cleanup(h1)
    assert db.get(b"x") == bytes(2)
    assert db.get(b"yz") is None
    assert len(db) == 1 and db.size == 3


def test_multi_level_staging() -> None:
    # client-go TestMemDBMultiLevelStaging.
    db = MemBuffer()
    key = b"\x00"
    for i in range(100):
        assert db.staging() == i + 1
        db.set(key, bytes([i]))
        assert db.get(key) == bytes([i])
    for i in range(99, -1, -1):
        expect = i
        if i % 2 == 1:
            expect = i - 1
            db.cleanup(i + 1)
        else:
            db.release(i + 1)
        assert db.get(key) == bytes([expect])
    assert db.staging_depth == 0


def test_discard_restores_everything() -> None:
    # client-go TestDiscard.
    db = MemBuffer()
    cnt = 2000
    base = fill(db, 0, cnt, 0)
    size = db.size
    db.cleanup(fill(db, 0, cnt, 1))
    assert len(db) == cnt and db.size == size
    assert all(db.get(k4(i)) == k4(i) for i in range(cnt))
    assert [k for k, _ in db.iterate(reverse=True)] == [k4(i) for i in reversed(range(cnt))]
    db.cleanup(base)
    assert all(db.get(k4(i)) is None for i in range(cnt))
    assert list(db.iterate()) == [] and len(db) == 0 and db.size == 0


def test_flush_overwrite() -> None:
    # client-go TestFlushOverwrite.
    db = MemBuffer()
    db.release(fill(db, 0, 1000, 0))
    size = db.size
    db.release(fill(db, 0, 1000, 1))
    assert len(db) == 1000 and db.size == size
    assert [v for _, v in db.iterate()] == [k4(i + 1) for i in range(1000)]


def test_complex_update() -> None:
    # client-go TestComplexUpdate.
    db = MemBuffer()
    db.release(fill(db, 0, 6000, 0))
    assert len(db) == 6000
    db.release(fill(db, 3000, 9000, 1))
    assert len(db) == 9000
    for i in range(9000):
        assert db.get(k4(i)) == (k4(i + 1) if i >= 3000 else k4(i))


def test_nested_sandbox() -> None:
    # client-go TestNestedSandbox.
    db = MemBuffer()
    h0 = fill(db, 0, 200, 0)
    h1 = fill(db, 0, 100, 1)
    h2 = fill(db, 50, 150, 2)
    h3 = fill(db, 100, 120, 3)
    h4 = fill(db, 0, 150, 4)
    db.cleanup(h4)
    db.release(h3)
    db.cleanup(h2)
    db.release(h1)
    db.release(h0)
    expected = [(k4(i), k4(i + 1) if i < 100 else k4(i)) for i in range(200)]
    assert list(db.iterate()) == expected
    assert list(db.iterate(reverse=True)) == expected[::-1]


def test_invalid_staging_handles() -> None:
    # client-go TestInvalidStagingHandle: 0 is a no-op; release takes only the innermost;
    # cleanup ignores handles above the innermost and refuses outer ones.
    db = MemBuffer()
    h1 = db.staging()
    h2 = db.staging()
    with pytest.raises(ValueError, match="innermost"):
        db.release(h2 + 1)
    with pytest.raises(ValueError, match="innermost"):
        db.release(h2 - 1)
    db.release(0)
    db.release(h2)
    db.release(0)
    db.release(h1)
    assert db.staging_depth == 0

    h1 = db.staging()
    h2 = db.staging()
    db.cleanup(h2 + 1)
    assert db.staging_depth == 2
    with pytest.raises(ValueError, match="open inside it"):
        db.cleanup(h2 - 1)
    db.cleanup(0)
    db.cleanup(h2)
    db.cleanup(h1)
    assert db.staging_depth == 0


def test_cleanup_keeps_persistent_flags() -> None:
    # client-go TestCleanupKeepPersistentFlag and TestFlags.
    db = MemBuffer()
    h = db.staging()
    db.set(b"\x01", b"\x01", FlagsOp.SET_KEY_LOCKED)
    db.set(b"\x02", b"\x02", FlagsOp.SET_PRESUME_KEY_NOT_EXISTS)
    db.set(b"\x03", b"\x03", FlagsOp.SET_KEY_LOCKED, FlagsOp.SET_PRESUME_KEY_NOT_EXISTS)
    db.cleanup(h)
    for key in (b"\x01", b"\x02", b"\x03"):
        assert db.get(key) is None
    assert db.get_flags(b"\x01") == KeyFlags.KEY_LOCKED
    assert db.get_flags(b"\x02") is None
    assert db.get_flags(b"\x03") == KeyFlags.KEY_LOCKED
    assert len(db) == 2 and db.size == 2
    assert list(db.iterate()) == []
    assert [e.key for e in db.iterate_with_flags()] == [b"\x01", b"\x03"]


def test_cleanup_restores_non_persistent_flags_of_existing_keys() -> None:
    db = MemBuffer()
    db.set(b"k", b"v", FlagsOp.SET_PRESUME_KEY_NOT_EXISTS)
    db.update_flags(b"lock-only", FlagsOp.SET_NEED_LOCKED)
    h = db.staging()
    db.set(b"k", b"v2", FlagsOp.DEL_PRESUME_KEY_NOT_EXISTS, FlagsOp.SET_KEY_LOCKED)
    db.update_flags(b"lock-only", FlagsOp.DEL_NEED_LOCKED, FlagsOp.SET_ASSERT_EXIST)
    db.delete(b"lock-only")
    db.cleanup(h)
    assert db.get(b"k") == b"v"
    # PresumeKNE is back; the lock taken in the statement stays.
    assert db.get_flags(b"k") == (
        KeyFlags.PRESUME_KNE | KeyFlags.NEED_CHECK_EXISTS | KeyFlags.KEY_LOCKED
    )
    assert db.get(b"lock-only") is None
    assert db.get_flags(b"lock-only") == KeyFlags.NEED_LOCKED
    assert len(db) == 2 and db.size == len(b"k") + 1 + len(b"lock-only")


def dirty(db: MemBuffer) -> bool:
    # A function call, so that the type checker does not narrow the property.
    return db.dirty


def test_dirty() -> None:
    # client-go TestDirty.
    db = MemBuffer()
    assert not dirty(db)
    db.set(b"\x01", b"\x01")
    assert dirty(db)

    db = MemBuffer()
    h = db.staging()
    db.set(b"\x01", b"\x01")
    db.cleanup(h)
    assert not dirty(db)
    h = db.staging()
    db.set(b"\x01", b"\x01")
    db.release(h)
    assert dirty(db)

    db = MemBuffer()
    h = db.staging()
    db.set(b"\x01", b"\x01", FlagsOp.SET_KEY_LOCKED)
    db.cleanup(h)
    assert dirty(db)

    db = MemBuffer()
    h = db.staging()
    db.set(b"\x01", b"\x01", FlagsOp.SET_PRESUME_KEY_NOT_EXISTS)
    db.cleanup(h)
    assert not dirty(db)

    db = MemBuffer()
    db.release(db.staging())  # nothing written
    assert not dirty(db)


def test_inspect_stage() -> None:
    # client-go TestInspectStage.
    db = MemBuffer()
    h1 = fill(db, 0, 1000, 0)
    h2 = fill(db, 500, 1000, 1)
    for i in range(500, 1500):
        db.set(k4(i), k4(i + 2))
    h3 = fill(db, 1000, 2000, 3)

    in3 = list(db.inspect_stage(h3))
    assert [e.key for e in in3] == [k4(i) for i in range(1000, 2000)]
    assert all(e.value == k4(struct.unpack(">I", e.key)[0] + 3) for e in in3)

    in2 = {e.key: e.value for e in db.inspect_stage(h2)}
    assert set(in2) == {k4(i) for i in range(500, 2000)}
    assert in2[k4(700)] == k4(702) and in2[k4(1200)] == k4(1203)

    db.cleanup(h3)
    db.release(h2)
    in1 = {e.key: e.value for e in db.inspect_stage(h1)}
    assert set(in1) == {k4(i) for i in range(1500)}
    assert in1[k4(100)] == k4(100) and in1[k4(1499)] == k4(1501)
    db.release(h1)
    with pytest.raises(ValueError, match="no open staging"):
        list(db.inspect_stage(1))


def test_checkpoint() -> None:
    # client-go TestMemDBCheckpoint.
    db = MemBuffer()
    cp1 = db.checkpoint()
    db.set(b"x", b"x")
    cp2 = db.checkpoint()
    db.set(b"y", b"y")
    h = db.staging()
    db.set(b"z", b"z")
    db.release(h)
    assert [db.get(k) for k in (b"x", b"y", b"z")] == [b"x", b"y", b"z"]
    db.revert_to_checkpoint(cp2)
    assert db.get(b"x") == b"x"
    assert db.get(b"y") is None and db.get(b"z") is None
    db.revert_to_checkpoint(cp1)
    assert db.get(b"x") is None and len(db) == 0 and db.size == 0
    with pytest.raises(ValueError, match="already undone"):
        db.revert_to_checkpoint(cp2)


def test_checkpoint_validation() -> None:
    db = MemBuffer()
    cp = db.checkpoint()
    db.set(b"a", b"1")
    h = db.staging()
    with pytest.raises(ValueError, match="open staging"):
        db.revert_to_checkpoint(cp)
    inner = db.checkpoint()
    db.set(b"b", b"2")
    db.revert_to_checkpoint(inner)
    assert db.get(b"b") is None
    db.release(h)
    db.reset()
    with pytest.raises(ValueError, match="reset"):
        db.revert_to_checkpoint(cp)
    with pytest.raises(TypeError):
        db.revert_to_checkpoint(3)  # type: ignore[arg-type]


def test_reset() -> None:
    # client-go TestReset.
    db = MemBuffer()
    for i in range(100):
        db.set(k4(i), k4(i))
    db.staging()
    db.reset()
    assert db.get(k4(0)) is None and db.get_flags(k4(0)) is None
    assert list(db.iterate()) == [] and len(db) == 0 and db.size == 0
    assert not db.dirty and db.staging_depth == 0
    db.set(b"a", b"b")
    assert list(db.iterate()) == [(b"a", b"b")]


# ---------------------------------------------------------------------------- model check

KEYS = st.binary(min_size=0, max_size=3)
VALUES = st.binary(min_size=1, max_size=4)
OPS = st.lists(st.sampled_from(list(FlagsOp)), max_size=3)

_Model = dict[bytes, tuple[object, int]]  # key -> (value or None / "T", flags)


class MemBufferMachine(RuleBasedStateMachine):
    """Random writes, staging and checkpoints checked against a dict model."""

    def __init__(self) -> None:
        super().__init__()
        self.db = MemBuffer(entry_size_limit=6, total_size_limit=60)
        # Tiny index chunks so that splits and cross-chunk seeks happen constantly.
        self.db._index.chunk_max = 3
        self.model: _Model = {}
        self.stack: list[_Model] = []
        self.checkpoints: list[tuple[object, _Model, int]] = []

    @initialize()
    def start(self) -> None:
        pass

    def _apply(self, key: bytes, value: object, ops: list[FlagsOp]) -> None:
        old_value, old_flags = self.model.get(key, (None, None))
        flags = old_flags or 0
        if value is not None:
            flags &= ~int(KeyFlags.NEED_CONSTRAINT_CHECK_IN_PREWRITE)
        flags = int(apply_flags_ops(flags, ops))
        new_value = old_value if value is None else value
        new = dict(self.model)
        new[key] = (new_value, flags)
        if new_value is None and not flags:
            del new[key]
        size = sum(len(k) + (len(v) if isinstance(v, bytes) else 0) for k, (v, _) in new.items())
        vlen = len(value) if isinstance(value, bytes) else 0
        entry = None if value is None else len(key) + vlen
        try:
            if value is None:
                self.db.update_flags(key, *ops)
            elif value == "T":
                self.db.delete(key, *ops)
            else:
                assert isinstance(value, bytes)
                self.db.set(key, value, *ops)
        except TxnTooLargeError as e:
            assert (entry is not None and entry > 6) or size > 60, (e, entry, size)
            return
        assert not ((entry is not None and entry > 6) or size > 60)
        self.model = new

    @rule(key=KEYS, value=VALUES, ops=OPS)
    def set(self, key: bytes, value: bytes, ops: list[FlagsOp]) -> None:
        self._apply(key, value, ops)

    @rule(key=KEYS, ops=OPS)
    def delete(self, key: bytes, ops: list[FlagsOp]) -> None:
        self._apply(key, "T", ops)

    @rule(key=KEYS, ops=OPS)
    def update_flags(self, key: bytes, ops: list[FlagsOp]) -> None:
        self._apply(key, None, ops)

    @rule()
    def staging(self) -> None:
        self.stack.append(dict(self.model))
        assert self.db.staging() == len(self.stack)

    @precondition(lambda self: self.stack)
    @rule()
    def release(self) -> None:
        self.db.release(len(self.stack))
        self.stack.pop()
        self.checkpoints = [c for c in self.checkpoints if c[2] <= len(self.stack)]

    @precondition(lambda self: self.stack)
    @rule()
    def cleanup(self) -> None:
        self.db.cleanup(len(self.stack))
        before = self.stack.pop()
        self.model = _restore(before, self.model)
        self.checkpoints = [c for c in self.checkpoints if c[2] <= len(self.stack)]

    @rule()
    def checkpoint(self) -> None:
        self.checkpoints.append((self.db.checkpoint(), dict(self.model), len(self.stack)))

    @precondition(lambda self: self.checkpoints)
    @rule(data=st.data())
    def revert(self, data: st.DataObject) -> None:
        usable = [c for c in self.checkpoints if c[2] == len(self.stack)]
        if not usable:
            return
        cp, before, _ = data.draw(st.sampled_from(usable))
        self.db.revert_to_checkpoint(cp)  # type: ignore[arg-type]
        self.model = _restore(before, self.model)
        position = cp.position  # type: ignore[attr-defined]
        self.checkpoints = [c for c in self.checkpoints if c[0].position <= position]  # type: ignore[attr-defined]

    @invariant()
    def matches_model(self) -> None:
        db, model = self.db, self.model
        assert len(db) == len(model)
        expected_size = sum(
            len(k) + (len(v) if isinstance(v, bytes) else 0) for k, (v, _) in model.items()
        )
        assert db.size == expected_size
        entries = list(db.iterate_with_flags())
        want = []
        for k in sorted(model):
            v, f = model[k]
            want.append(MemEntry(k, TOMBSTONE if v == "T" else v, KeyFlags(f)))  # type: ignore[arg-type]
        assert entries == want
        assert list(db.iterate_with_flags(reverse=True)) == want[::-1]
        assert list(db.iterate()) == [(e.key, e.value) for e in want if e.value is not None]
        assert list(db.keys(reverse=True)) == [e.key for e in reversed(want)]
        if want:
            mid = want[len(want) // 2].key
            assert [e.key for e in db.iterate_with_flags(mid)] == [
                e.key for e in want if e.key >= mid
            ]
            # An empty end key means "no upper bound", as in TiKV.
            assert [e.key for e in db.iterate_with_flags(None, mid, reverse=True)] == [
                e.key for e in reversed(want) if not mid or e.key < mid
            ]
        for e in want[:5]:
            assert db.get(e.key) == e.value
            assert db.get_flags(e.key) == e.flags


def _restore(before: _Model, current: _Model) -> _Model:
    """Model of cleanup: old state, but persistent flags keep their current value."""
    result: _Model = {}
    persistent = int(PERSISTENT_FLAGS)
    for key in set(before) | set(current):
        cur_flags = current.get(key, (None, 0))[1]
        cur_p = cur_flags & persistent
        if key in before:
            v, f = before[key]
            result[key] = (v, (f & ~persistent) | cur_p)
        elif cur_p:
            result[key] = (None, cur_p)
        if key in result and result[key] == (None, 0):
            del result[key]
    return result


MemBufferMachine.TestCase.settings = settings(
    max_examples=150,
    stateful_step_count=40,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)
TestMemBufferModel = MemBufferMachine.TestCase
