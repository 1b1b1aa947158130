"""TiDB's GC time layout: client-go TestCompatibleParseGCTime and edge cases of our own."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone

import pytest
from tikv_txn import gc as gc_module
from tikv_txn.gc_time import GC_TIME_FORMAT, format_gc_time, parse_gc_time

BEIJING = timezone(timedelta(hours=8))
EXPECTED = datetime(2018, 12, 18, 11, 53, 37, tzinfo=UTC)

# client-go util/misc_test.go TestCompatibleParseGCTime: every one of these is the same
# instant, 2018-12-18 11:53:37 UTC.
VALID = [
    "20181218-19:53:37 +0800 CST",
    "20181218-19:53:37 +0800 MST",
    "20181218-19:53:37 +0800 FOO",
    "20181218-19:53:37 +0800 +08",
    "20181218-19:53:37 +0800",
    "20181218-19:53:37 +0800 ",
    "20181218-11:53:37 +0000",
    "20181218-11:53:37.000 +0000",
    "20181218-19:53:37.000 +0800 +08",
]

INVALID = [
    "",
    " ",
    "foo",
    "20181218-11:53:37",
    "20181218-19:53:37 +0800CST",
    "20181218-19:53:37 +0800 FOO BAR",
    "20181218-19:53:37 +0800FOOOOOOO BAR",
    "20181218-19:53:37 ",
]


@pytest.mark.parametrize("value", VALID)
def test_compatible_parse_gc_time_accepts_current_and_legacy_layouts(value: str) -> None:
    parsed = parse_gc_time(value)
    assert parsed == EXPECTED
    assert format_gc_time(parsed.astimezone(BEIJING)) == "20181218-19:53:37.000 +0800"


@pytest.mark.parametrize("value", INVALID)
def test_compatible_parse_gc_time_rejects(value: str) -> None:
    with pytest.raises(ValueError, match="does not start with a time in the layout") as info:
        parse_gc_time(value)
    assert repr(value) in str(info.value)


def test_parse_keeps_the_written_offset_and_milliseconds() -> None:
    parsed = parse_gc_time("20240229-23:59:59.123 -0530")
    assert parsed.utcoffset() == -timedelta(hours=5, minutes=30)
    assert (parsed.year, parsed.month, parsed.day) == (2024, 2, 29)
    assert (parsed.hour, parsed.minute, parsed.second, parsed.microsecond) == (23, 59, 59, 123000)
    assert parsed.astimezone(UTC) == datetime(2024, 3, 1, 5, 29, 59, 123000, tzinfo=UTC)
    assert format_gc_time(parsed) == "20240229-23:59:59.123 -0530"


@pytest.mark.parametrize(
    ("value", "microsecond"),
    [
        ("20181218-11:53:37.5 +0000", 500000),  # any number of fraction digits, as Go
        ("20181218-11:53:37,25 +0000", 250000),  # Go also takes a comma
        ("20181218-11:53:37.123456789 +0000", 123456),  # beyond microseconds: truncated
        ("20181218-11:53:37.999999999 +0000 UTC", 999999),
    ],
)
def test_fraction_of_a_second(value: str, microsecond: int) -> None:
    assert parse_gc_time(value) == EXPECTED.replace(microsecond=microsecond)


def test_one_digit_hour_is_accepted_as_go_does() -> None:
    assert parse_gc_time("20181218-1:02:03 +0000") == datetime(2018, 12, 18, 1, 2, 3, tzinfo=UTC)


@pytest.mark.parametrize(
    "value",
    [
        "20181318-11:53:37 +0000",  # month 13
        "20190229-11:53:37 +0000",  # not a leap year
        "20181200-11:53:37 +0000",  # day 0
        "20181218-24:00:00 +0000",  # hour 24
        "20181218-11:60:37 +0000",  # minute 60
        "20181218-11:53:60 +0000",  # second 60
        "20181218-11:53:37 +2400",  # offset hour 24: Go takes it, no zone has it
        "20181218-11:53:37 +0060",
        "20181218-11:53:37 0800",  # no sign
        "20181218-11:53:37 +08:00",  # not Go's -0700
        "20181218-11:53:37 +080",
        "2018121-11:53:37 +0000",
        "20181218 11:53:37 +0000",
        "20181218-11:53:37. +0000",  # a point without digits is not a fraction
        "20181218-11:53:37 +0000 CST extra",  # only one trailing field is dropped
        "20181218-011:53:37 +0000",
        "٢٠١٨١٢١٨-11:53:37 +0000",  # non-ASCII digits
        "0000" + "1218-11:53:37 +0000",  # year 0: datetime cannot hold it
    ],
)
def test_out_of_range_or_malformed_values_raise(value: str) -> None:
    with pytest.raises(ValueError, match="GC time"):
        parse_gc_time(value)


def test_parse_rejects_non_strings() -> None:
    with pytest.raises(TypeError, match="GC time must be a str, got bytes"):
        parse_gc_time(b"20181218-11:53:37 +0000")  # type: ignore[arg-type]


def test_format_gc_time() -> None:
    when = datetime(2018, 12, 18, 19, 53, 37, 987654, tzinfo=BEIJING)
    # Milliseconds are truncated, not rounded, as Go's ".000" does.
    assert format_gc_time(when) == "20181218-19:53:37.987 +0800"
    assert format_gc_time(datetime(999, 1, 2, 3, 4, 5, tzinfo=UTC)) == "09990102-03:04:05.000 +0000"
    minus = timezone(-timedelta(hours=3, minutes=30))
    assert format_gc_time(datetime(2020, 1, 1, tzinfo=minus)) == "20200101-00:00:00.000 -0330"
    # Go prints whole minutes of the offset; a -30 s offset is "+0000" there too.
    odd = timezone(-timedelta(seconds=30))
    assert format_gc_time(datetime(2020, 1, 1, tzinfo=odd)) == "20200101-00:00:00.000 +0000"
    assert len(format_gc_time(when)) == len(GC_TIME_FORMAT)


def test_format_then_parse_round_trips_to_the_millisecond() -> None:
    when = datetime(2031, 7, 4, 8, 9, 10, 456789, tzinfo=timezone(timedelta(hours=-7)))
    back = parse_gc_time(format_gc_time(when))
    assert back == when.replace(microsecond=456000)
    assert back.utcoffset() == when.utcoffset()


def test_format_rejects_naive_and_non_datetimes() -> None:
    with pytest.raises(ValueError, match="timezone-aware"):
        format_gc_time(datetime(2020, 1, 1))
    with pytest.raises(TypeError, match="when must be a datetime, got str"):
        format_gc_time("20200101")  # type: ignore[arg-type]


def test_helpers_are_exported_where_gc_users_look() -> None:
    assert gc_module.parse_gc_time is parse_gc_time
    assert gc_module.format_gc_time is format_gc_time
    assert gc_module.GC_TIME_FORMAT == "20060102-15:04:05.000 -0700"
