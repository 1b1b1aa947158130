"""The time format of TiDB's GC bookkeeping (``tikv_gc_safe_point``, ``tikv_gc_last_run_time``…).

TiDB's GC worker keeps its state as text rows of the ``mysql.tidb`` table, times written with
Go's layout ``20060102-15:04:05.000 -0700`` (for example ``20181218-19:53:37.000 +0800``).
Older TiDB versions wrote ``20060102-15:04:05 -0700 MST``: no milliseconds and a trailing
zone *name*, which carries nothing the numeric offset does not (and may be any word: ``CST``,
``+08``…). client-go keeps a parser that reads both (``util.CompatibleParseGCTime``,
``util/misc.go``); :func:`parse_gc_time` is that parser, :func:`format_gc_time` writes the
current layout.

The parser follows Go's ``time.Parse`` of the layout ``20060102-15:04:05 -0700`` exactly:

- a fraction of a second may follow the seconds (``.000``, or with a comma), as Go's parser
  allows even when the layout has none;
- the hour may have one digit, everything else has fixed width;
- the offset is a sign and four digits (``+0800``), nothing else;
- when the whole text does not parse, the last space-separated field is dropped and the rest
  is tried once more — which is what admits the trailing zone name, and also a single
  trailing space; two trailing words, or a zone name glued to the offset, are refused.

Python keeps microseconds: digits of the fraction beyond the sixth are dropped (truncated,
as Go drops those beyond the ninth). An offset hour of 24 or minute of 60, which Go's
parser admits but no real zone has, is refused: :class:`datetime.timezone` stops below 24
hours.
"""

from __future__ import annotations

import re
from datetime import datetime, timedelta, timezone

__all__ = ["GC_TIME_FORMAT", "format_gc_time", "parse_gc_time"]

#: Go's layout of the times TiDB's GC worker stores (client-go ``util.GCTimeFormat``).
GC_TIME_FORMAT = "20060102-15:04:05.000 -0700"

# Go layout "20060102-15:04:05 -0700" as time.Parse reads it: fixed-width year, month, day,
# minute and second; a one- or two-digit hour; an optional fraction right after the seconds;
# then a space and a numeric offset. Range checks are left to datetime (as Go checks them).
_GC_TIME = re.compile(
    r"(\d{4})(\d{2})(\d{2})-(\d{1,2}):(\d{2}):(\d{2})(?:[.,](\d+))? ([+-])(\d{2})(\d{2})",
    re.ASCII,
)


def _parse_exact(text: str) -> datetime | None:
    m = _GC_TIME.fullmatch(text)
    if m is None:
        return None
    year, month, day, hour, minute, second = (int(g) for g in m.groups()[:6])
    fraction, sign, off_h, off_m = m.group(7), m.group(8), int(m.group(9)), int(m.group(10))
    if off_h > 23 or off_m > 59:
        return None
    microsecond = int((fraction or "0")[:6].ljust(6, "0"))
    offset = timedelta(hours=off_h, minutes=off_m)
    try:
        return datetime(
            year,
            month,
            day,
            hour,
            minute,
            second,
            microsecond,
            tzinfo=timezone(-offset if sign == "-" else offset),
        )
    except ValueError:  # month 13, February 30th, hour 24, second 60…
        return None


def parse_gc_time(value: str) -> datetime:
    """Parse a GC time stored by TiDB, in the current or the legacy layout.

    Returns an aware :class:`~datetime.datetime` in the offset written in ``value``
    (compare it, or convert it with ``astimezone``). Raises :class:`TypeError` if ``value``
    is not a ``str`` and :class:`ValueError` naming the value and the expected layout if
    neither it nor it without its last space-separated field is such a time.
    """
    if not isinstance(value, str):
        raise TypeError(f"GC time must be a str, got {type(value).__name__}")
    parsed = _parse_exact(value)
    if parsed is None:
        # The legacy layout ended with a zone name: drop the last field and try again
        # (once — client-go's CompatibleParseGCTime does the same).
        prefix = value.rsplit(" ", 1)[0] if " " in value else ""
        parsed = _parse_exact(prefix)
    if parsed is None:
        raise ValueError(
            f"GC time {value!r} does not start with a time in the layout {GC_TIME_FORMAT!r}"
        )
    return parsed


def format_gc_time(when: datetime) -> str:
    """``when`` in TiDB's GC time layout, e.g. ``20181218-19:53:37.000 +0800``.

    ``when`` must be timezone-aware (the layout carries the offset; a naive time would be
    read back in a zone nobody chose): it is written in its own offset, milliseconds
    truncated, as Go formats ``.000``. Raises :class:`TypeError` for a non-datetime and
    :class:`ValueError` for a naive one.
    """
    if not isinstance(when, datetime):
        raise TypeError(f"when must be a datetime, got {type(when).__name__}")
    offset = when.utcoffset()
    if offset is None:
        raise ValueError(f"when must be timezone-aware, got naive {when!r}")
    # Go prints the offset in whole minutes, hours and minutes of its absolute value.
    seconds = int(offset.total_seconds())
    minutes = abs(seconds) // 60
    sign = "-" if seconds < 0 and minutes else "+"
    hours, mins = divmod(minutes, 60)
    return (
        f"{when.year:04d}{when.month:02d}{when.day:02d}-"
        f"{when.hour:02d}:{when.minute:02d}:{when.second:02d}.{when.microsecond // 1000:03d} "
        f"{sign}{hours:02d}{mins:02d}"
    )
