"""TiKV's per-request time details and Go-style duration text.

TiKV reports where a request spent its time in ``ExecDetailsV2`` (on the responses of reads,
``KvPrewrite``, ``KvCommit``…, when the request context asks for it). :class:`TimeDetail`
sums those figures over one or more responses and prints them the way client-go's
``util.TimeDetail.String`` does (``util/execdetails.go``), so a slow-query line written by a
Python program reads like TiDB's: ``time_detail: {total_process_time: 2ms, tikv_wall_time:
3ms}``.

Durations are integers of nanoseconds, as in Go (``time.Duration``) and in TiKV's
``TimeDetailV2``: a :class:`datetime.timedelta` would drop the nanoseconds.

:func:`go_duration` is Go's ``time.Duration.String`` (``1.5s``, ``2ms``, ``1m30s``,
``0s``…) and :func:`format_duration` is client-go's ``util.FormatDuration``, which rounds
to two significant decimals below ten units and one above before printing.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, fields

from tikv_proto import kvrpcpb_pb2

__all__ = [
    "TimeDetail",
    "format_duration",
    "go_duration",
]

_NS_PER_US = 1_000
_NS_PER_MS = 1_000_000
_NS_PER_S = 1_000_000_000


def _check_ns(name: str, value: object) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{name} must be an int of nanoseconds, got {type(value).__name__}")
    return value


def _fraction(value: int, digits: int) -> str:
    """``value`` (< 10**digits) as a decimal fraction without trailing zeros ("" for 0)."""
    if value == 0:
        return ""
    return "." + f"{value:0{digits}d}".rstrip("0")


def go_duration(ns: int) -> str:
    """Go's ``time.Duration.String`` of ``ns`` nanoseconds.

    Below one second the largest unit that keeps the integer part non-zero is used (``ns``,
    ``µs`` — with the micro sign, as Go prints it — or ``ms``) with the exact fraction; from
    one second on, hours, minutes and seconds (``1h0m0s``, ``1m30s``, ``1.5s``). Zero is
    ``0s``; a negative duration is prefixed with ``-``.
    """
    _check_ns("ns", ns)
    if ns == 0:
        return "0s"
    sign = "-" if ns < 0 else ""
    u = abs(ns)
    if u < _NS_PER_US:
        return f"{sign}{u}ns"
    if u < _NS_PER_MS:
        return f"{sign}{u // _NS_PER_US}{_fraction(u % _NS_PER_US, 3)}µs"
    if u < _NS_PER_S:
        return f"{sign}{u // _NS_PER_MS}{_fraction(u % _NS_PER_MS, 6)}ms"
    seconds, frac = divmod(u, _NS_PER_S)
    minutes, seconds = divmod(seconds, 60)
    text = f"{seconds}{_fraction(frac, 9)}s"
    if minutes:
        hours, minutes = divmod(minutes, 60)
        text = f"{minutes}m{text}"
        if hours:
            text = f"{hours}h{text}"
    return sign + text


def _go_round(x: float) -> float:
    # Go's math.Round: half away from zero (Python's round() is half to even).
    t = math.trunc(x)
    if abs(x - t) >= 0.5:
        t += int(math.copysign(1, x))
    return float(t)


def format_duration(ns: int) -> str:
    """client-go's ``util.FormatDuration``: a duration rounded for reading, in Go's text.

    Up to one microsecond the duration is printed as is. Otherwise the part below the unit
    (second, millisecond or microsecond, the largest not above the duration) is rounded to
    two decimals when the duration is under ten units and to one decimal above, so
    ``1.234567ms`` prints as ``1.23ms`` and ``12.34ms`` as ``12.3ms``. The arithmetic is
    done in binary floating point as Go does it, so the text is Go's to the nanosecond.
    """
    _check_ns("ns", ns)
    if ns <= _NS_PER_US:
        return go_duration(ns)
    if ns >= _NS_PER_S:
        unit = _NS_PER_S
    elif ns >= _NS_PER_MS:
        unit = _NS_PER_MS
    else:
        unit = _NS_PER_US
    integer = (ns // unit) * unit
    decimal = float(ns % unit) / float(unit)
    scale = 100.0 if ns < 10 * unit else 10.0
    decimal = _go_round(decimal * scale) / scale
    # Go converts the float back to a Duration by truncation toward zero.
    return go_duration(integer + int(decimal * float(unit)))


@dataclass(slots=True)
class TimeDetail:
    """Where TiKV spent a request's time, summed over responses (client-go ``TimeDetail``).

    Every field is a duration in nanoseconds. ``str()`` gives client-go's text: only the
    non-zero parts, in field order, each through :func:`format_duration`; an all-zero detail
    prints as the empty string.

    Attributes:
        process_time_ns: Wall time spent processing the request payload, excluding waits
            (``total_process_time``).
        suspend_time_ns: Time a coprocessor task spent yielded (``total_suspend_time``).
        wait_time_ns: Off-CPU wall time in TiKV, queueing included (``total_wait_time``).
        kv_read_wall_time_ns: Time spent in the KV get / scan (``total_kv_read_wall_time``).
        kv_grpc_process_time_ns: From receiving the request to starting to handle it
            (``tikv_grpc_process_time``).
        kv_grpc_wait_time_ns: From the response being ready to sending it
            (``tikv_grpc_wait_time``).
        total_rpc_wall_time_ns: The whole RPC as TiKV timed it (``tikv_wall_time``).

    """

    process_time_ns: int = 0
    suspend_time_ns: int = 0
    wait_time_ns: int = 0
    kv_read_wall_time_ns: int = 0
    kv_grpc_process_time_ns: int = 0
    kv_grpc_wait_time_ns: int = 0
    total_rpc_wall_time_ns: int = 0

    def __post_init__(self) -> None:
        for f in fields(self):
            value = _check_ns(f.name, getattr(self, f.name))
            if value < 0:
                raise ValueError(f"{f.name} must not be negative, got {value}")

    @classmethod
    def from_exec_details(cls, details: kvrpcpb_pb2.ExecDetailsV2 | None) -> TimeDetail:
        """The time detail of one response's ``exec_details_v2`` (all zero for ``None``)."""
        detail = cls()
        detail.merge_exec_details(details)
        return detail

    def merge_exec_details(self, details: kvrpcpb_pb2.ExecDetailsV2 | None) -> None:
        """Add the time detail of one response's ``exec_details_v2`` (``None`` adds nothing)."""
        if details is not None:
            self.merge_from_pb(
                details.time_detail_v2 if details.HasField("time_detail_v2") else None,
                details.time_detail if details.HasField("time_detail") else None,
            )

    def merge_from_pb(
        self,
        time_detail_v2: kvrpcpb_pb2.TimeDetailV2 | None,
        time_detail: kvrpcpb_pb2.TimeDetail | None,
    ) -> None:
        """Add a response's ``TimeDetailV2``, or its older ``TimeDetail`` when V2 is absent.

        As client-go's ``MergeFromTimeDetail``: V2 (nanoseconds, every field) wins when TiKV
        sent it; the old message has millisecond wait / process / KV-read times and a
        nanosecond total, and no suspend or gRPC times.
        """
        if time_detail_v2 is not None:
            self.wait_time_ns += time_detail_v2.wait_wall_time_ns
            self.process_time_ns += time_detail_v2.process_wall_time_ns
            self.suspend_time_ns += time_detail_v2.process_suspend_wall_time_ns
            self.kv_read_wall_time_ns += time_detail_v2.kv_read_wall_time_ns
            self.kv_grpc_process_time_ns += time_detail_v2.kv_grpc_process_time_ns
            self.kv_grpc_wait_time_ns += time_detail_v2.kv_grpc_wait_time_ns
            self.total_rpc_wall_time_ns += time_detail_v2.total_rpc_wall_time_ns
        elif time_detail is not None:
            self.wait_time_ns += time_detail.wait_wall_time_ms * _NS_PER_MS
            self.process_time_ns += time_detail.process_wall_time_ms * _NS_PER_MS
            self.kv_read_wall_time_ns += time_detail.kv_read_wall_time_ms * _NS_PER_MS
            self.total_rpc_wall_time_ns += time_detail.total_rpc_wall_time_ns

    def merge(self, other: TimeDetail | None) -> None:
        """Add every field of ``other`` to this detail (``None`` adds nothing)."""
        if other is None:
            return
        if not isinstance(other, TimeDetail):
            raise TypeError(f"other must be a TimeDetail, got {type(other).__name__}")
        for f in fields(self):
            setattr(self, f.name, getattr(self, f.name) + getattr(other, f.name))

    def __str__(self) -> str:
        parts = [
            f"{label}: {format_duration(value)}"
            for label, value in (
                ("total_process_time", self.process_time_ns),
                ("total_suspend_time", self.suspend_time_ns),
                ("total_wait_time", self.wait_time_ns),
                ("total_kv_read_wall_time", self.kv_read_wall_time_ns),
                ("tikv_grpc_process_time", self.kv_grpc_process_time_ns),
                ("tikv_grpc_wait_time", self.kv_grpc_wait_time_ns),
                ("tikv_wall_time", self.total_rpc_wall_time_ns),
            )
            if value > 0
        ]
        if not parts:
            return ""
        return "time_detail: {" + ", ".join(parts) + "}"
