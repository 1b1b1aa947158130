"""Per-snapshot runtime statistics (client-go ``txnsnapshot.SnapshotRuntimeStats``).

A snapshot asked to collect them (:meth:`tikv_txn.AsyncSnapshot.set_runtime_stats`) records
what its reads cost: RPCs per command with their time and the errors they met
(:class:`tikv_pd.request.RPCRuntimeStats`, client-go ``locate.RegionRequestRuntimeStats``,
which the request pipeline fills as it sends them), its
backoffs per kind, the time spent resolving locks, and the execution details TiKV returns
with each read (``ExecDetailsV2``: :class:`~tikv_pd.execdetails.TimeDetail`,
:class:`ScanDetail`, :class:`PoolTaskDetails`). ``str()`` prints them as client-go's
``String()`` methods do, so a slow-query line written by a Python program reads like
TiDB's: ``Get:{num_rpc:4, total_time:2s},txnLockFast_backoff:{num:2, total_time:10ms},
time_detail: {...}, scan_detail: {...}``.

Durations are integers of nanoseconds (Go's ``time.Duration``); client-go's maps print in
Go's random map order, ours in first-seen order.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field, fields

from tikv_pd.execdetails import TimeDetail, format_duration
from tikv_pd.request import RPCRuntimeStats
from tikv_proto import kvrpcpb_pb2

__all__ = [
    "PoolTaskDetails",
    "ScanDetail",
    "SnapshotRuntimeStats",
    "format_bytes",
]

_NS_PER_MS = 1_000_000
_KB = 1 << 10
_MB = 1 << 20
_GB = 1 << 30


def _go_float(value: float) -> str:
    """Go's ``%v`` of a float64: the shortest text that reads back to ``value``."""
    text = repr(value)
    if "e" in text or "E" in text:
        mantissa, exp = text.lower().split("e")
        sign = "-" if exp.startswith("-") else "+"
        digits = exp.lstrip("+-").rjust(2, "0")
        text = f"{mantissa}e{sign}{digits}"
    elif text.endswith(".0"):
        text = text[:-2]
    return text


def _bytes_to_string(n: int) -> str:
    # client-go util.BytesToString: the first unit whose quotient exceeds 1.
    for unit, name in ((_GB, "GB"), (_MB, "MB"), (_KB, "KB")):
        quotient = n / unit
        if quotient > 1:
            return f"{_go_float(quotient)} {name}"
    return f"{n} Bytes"


def format_bytes(n: int) -> str:
    """client-go ``util.FormatBytes``: ``15 Bytes``, ``1.50 KB``, ``2 MB``, ``10.5 GB``.

    Up to 1 KiB the plain byte count; above, the largest unit the size exceeds, with no
    decimals when it divides evenly, two below 10 units and one otherwise.
    """
    if isinstance(n, bool) or not isinstance(n, int):
        raise TypeError(f"n must be an int, got {type(n).__name__}")
    if n <= _KB:
        return _bytes_to_string(n)
    if n > _GB:
        unit, name = _GB, "GB"
    elif n > _MB:
        unit, name = _MB, "MB"
    else:
        unit, name = _KB, "KB"
    value = n / unit
    decimals = 0 if n % unit == 0 else 2 if value < 10 else 1
    return f"{value:.{decimals}f} {name}"


@dataclass(slots=True)
class ScanDetail:
    """What TiKV's storage read for requests, summed (client-go ``util.ScanDetail``).

    Filled from ``ExecDetailsV2.scan_detail_v2``; durations in nanoseconds.

    Attributes:
        total_keys: MVCC versions met, deleted ones included (``total_versions``).
        processed_keys: User keys read (``processed_versions``).
        processed_keys_size: Bytes of the user keys and values read.
        rocksdb_delete_skipped_count: RocksDB tombstones skipped.
        rocksdb_key_skipped_count: RocksDB internal keys skipped.
        rocksdb_block_cache_hit_count: RocksDB block cache hits.
        rocksdb_block_read_count: RocksDB blocks read from disk.
        rocksdb_block_read_byte: Bytes of those blocks.
        rocksdb_block_read_ns: Time reading them.
        get_snapshot_ns: Time taking the engine snapshot.
        ia_cache_hit_count: In-memory-archive segment cache hits.
        ia_remote_read_segment_count: Remote segment reads.
        ia_remote_read_segment_bytes: Bytes of remote segment reads.
        ia_remote_read_segment_ns: Time serving remote segment reads.

    """

    total_keys: int = 0
    processed_keys: int = 0
    processed_keys_size: int = 0
    rocksdb_delete_skipped_count: int = 0
    rocksdb_key_skipped_count: int = 0
    rocksdb_block_cache_hit_count: int = 0
    rocksdb_block_read_count: int = 0
    rocksdb_block_read_byte: int = 0
    rocksdb_block_read_ns: int = 0
    get_snapshot_ns: int = 0
    ia_cache_hit_count: int = 0
    ia_remote_read_segment_count: int = 0
    ia_remote_read_segment_bytes: int = 0
    ia_remote_read_segment_ns: int = 0

    def merge_from_pb(self, detail: kvrpcpb_pb2.ScanDetailV2 | None) -> None:
        """Add one response's ``ScanDetailV2`` (client-go ``MergeFromScanDetailV2``)."""
        if detail is None:
            return
        self.total_keys += detail.total_versions
        self.processed_keys += detail.processed_versions
        self.processed_keys_size += detail.processed_versions_size
        self.rocksdb_delete_skipped_count += detail.rocksdb_delete_skipped_count
        self.rocksdb_key_skipped_count += detail.rocksdb_key_skipped_count
        self.rocksdb_block_cache_hit_count += detail.rocksdb_block_cache_hit_count
        self.rocksdb_block_read_count += detail.rocksdb_block_read_count
        self.rocksdb_block_read_byte += detail.rocksdb_block_read_byte
        self.rocksdb_block_read_ns += detail.rocksdb_block_read_nanos
        self.get_snapshot_ns += detail.get_snapshot_nanos
        self.ia_cache_hit_count += detail.ia_cache_hit_count
        self.ia_remote_read_segment_count += detail.ia_remote_read_segment_count
        self.ia_remote_read_segment_bytes += detail.ia_remote_read_segment_bytes
        self.ia_remote_read_segment_ns += detail.ia_remote_read_segment_nanos

    def merge(self, other: ScanDetail) -> None:
        """Add every field of ``other``."""
        for f in fields(self):
            setattr(self, f.name, getattr(self, f.name) + getattr(other, f.name))

    def __str__(self) -> str:
        if self == ScanDetail():
            return ""
        out = "scan_detail: {"
        for label, value in (
            ("total_process_keys", str(self.processed_keys)),
            ("total_process_keys_size", str(self.processed_keys_size)),
            ("total_keys", str(self.total_keys)),
        ):
            if value != "0":
                out += f"{label}: {value}, "
        if self.get_snapshot_ns > 0:
            out += f"get_snapshot_time: {format_duration(self.get_snapshot_ns)}, "
        ia = [
            f"{label}: {text}"
            for label, value, text in (
                ("cache_hit_count", self.ia_cache_hit_count, str(self.ia_cache_hit_count)),
                (
                    "remote_read_segment_count",
                    self.ia_remote_read_segment_count,
                    str(self.ia_remote_read_segment_count),
                ),
                (
                    "remote_read_segment_bytes",
                    self.ia_remote_read_segment_bytes,
                    format_bytes(self.ia_remote_read_segment_bytes),
                ),
                (
                    "remote_read_segment_wait_time",
                    self.ia_remote_read_segment_ns,
                    format_duration(self.ia_remote_read_segment_ns),
                ),
            )
            if value > 0
        ]
        if ia:
            out += "ia: {" + ", ".join(ia) + "}, "
        rocksdb = [
            f"{label}: {value}"
            for label, value in (
                ("delete_skipped_count", self.rocksdb_delete_skipped_count),
                ("key_skipped_count", self.rocksdb_key_skipped_count),
            )
            if value > 0
        ]
        block = [
            f"{label}: {text}"
            for label, value, text in (
                (
                    "cache_hit_count",
                    self.rocksdb_block_cache_hit_count,
                    str(self.rocksdb_block_cache_hit_count),
                ),
                ("read_count", self.rocksdb_block_read_count, str(self.rocksdb_block_read_count)),
                (
                    "read_byte",
                    self.rocksdb_block_read_byte,
                    format_bytes(self.rocksdb_block_read_byte),
                ),
                (
                    "read_time",
                    self.rocksdb_block_read_ns,
                    format_duration(self.rocksdb_block_read_ns),
                ),
            )
            if value > 0
        ]
        rocksdb.append("block: {" + ", ".join(block) + "}")
        return out + "rocksdb: {" + ", ".join(rocksdb) + "}}"


def _merge_min(current: int, candidate: int, has_current: bool) -> int:
    return candidate if not has_current or candidate < current else current


def _average(total: int, count: int) -> str:
    # client-go formatPoolTaskAverage: two decimals, trailing zeros and dot removed.
    return f"{total / count:.2f}".rstrip("0").rstrip(".")


@dataclass(slots=True)
class PoolTaskDetails:
    """How TiKV's read pool ran the tasks of requests (client-go ``util.PoolTaskDetails``).

    Summed from ``ExecDetailsV2.read_pool_task_details``, one task per response, with the
    largest and smallest sample of each figure; durations in nanoseconds. See client-go
    for each figure's meaning; the names are its field names in snake case.
    """

    task_count: int = 0
    poll_count: int = 0
    max_poll_count: int = 0
    min_poll_count: int = 0
    dispatch_count: int = 0
    max_dispatch_count: int = 0
    min_dispatch_count: int = 0
    total_wall_time_ns: int = 0
    task_wall_time_sample_count: int = 0
    max_task_wall_time_ns: int = 0
    min_task_wall_time_ns: int = 0
    total_queue_wait_ns: int = 0
    max_queue_wait_ns: int = 0
    min_queue_wait_ns: int = 0
    total_wake_wait_ns: int = 0
    max_wake_wait_ns: int = 0
    min_wake_wait_ns: int = 0
    fair_queue_sample_count: int = 0
    total_fair_queue_waited_task_slices: int = 0
    max_fair_queue_waited_task_slices: int = 0
    min_fair_queue_waited_task_slices: int = 0
    poll_cpu_ns: int = 0
    max_poll_cpu_ns: int = 0
    min_poll_cpu_ns: int = 0
    poll_wall_ns: int = 0
    max_poll_wall_ns: int = 0
    min_poll_wall_ns: int = 0

    @property
    def empty(self) -> bool:
        """Whether no task was recorded."""
        return self.task_count == 0

    def merge_from_pb(self, d: kvrpcpb_pb2.PoolTaskDetails | None) -> None:
        """Add one response's ``PoolTaskDetails`` (client-go ``MergeFromPB``)."""
        if d is None:
            return
        had_polls = self.poll_count > 0
        had_queue = self.total_queue_wait_ns > 0
        had_wake = self.total_wake_wait_ns > 0
        had_fair = self.fair_queue_sample_count > 0
        had_wall = self.task_wall_time_sample_count > 0
        had_tasks = self.task_count > 0
        self.task_count += 1
        self.poll_count += d.poll_count
        self.max_poll_count = max(self.max_poll_count, d.poll_count)
        self.min_poll_count = _merge_min(self.min_poll_count, d.poll_count, had_tasks)
        self.dispatch_count += d.dispatch_count
        self.max_dispatch_count = max(self.max_dispatch_count, d.dispatch_count)
        self.min_dispatch_count = _merge_min(self.min_dispatch_count, d.dispatch_count, had_tasks)
        self.total_wall_time_ns += d.total_wall_nanos
        if d.total_wall_nanos > 0:
            self.task_wall_time_sample_count += 1
            self.max_task_wall_time_ns = max(self.max_task_wall_time_ns, d.total_wall_nanos)
            self.min_task_wall_time_ns = _merge_min(
                self.min_task_wall_time_ns, d.total_wall_nanos, had_wall
            )
        self.total_queue_wait_ns += d.total_queue_wait_nanos
        self.max_queue_wait_ns = max(self.max_queue_wait_ns, d.max_queue_wait_nanos)
        if d.total_queue_wait_nanos > 0:
            self.min_queue_wait_ns = _merge_min(
                self.min_queue_wait_ns, d.min_queue_wait_nanos, had_queue
            )
        self.total_wake_wait_ns += d.total_wake_wait_nanos
        self.max_wake_wait_ns = max(self.max_wake_wait_ns, d.max_wake_wait_nanos)
        if d.total_wake_wait_nanos > 0:
            self.min_wake_wait_ns = _merge_min(
                self.min_wake_wait_ns, d.min_wake_wait_nanos, had_wake
            )
        if d.fair_queue_enabled:
            self.fair_queue_sample_count += d.dispatch_count
            self.total_fair_queue_waited_task_slices += d.total_fair_queue_waited_task_slices
            self.max_fair_queue_waited_task_slices = max(
                self.max_fair_queue_waited_task_slices, d.max_fair_queue_waited_task_slices
            )
            self.min_fair_queue_waited_task_slices = _merge_min(
                self.min_fair_queue_waited_task_slices,
                d.min_fair_queue_waited_task_slices,
                had_fair,
            )
        self.poll_cpu_ns += d.poll_cpu_nanos
        self.max_poll_cpu_ns = max(self.max_poll_cpu_ns, d.max_poll_cpu_nanos)
        self.poll_wall_ns += d.poll_wall_nanos
        self.max_poll_wall_ns = max(self.max_poll_wall_ns, d.max_poll_wall_nanos)
        if d.poll_count > 0:
            self.min_poll_cpu_ns = _merge_min(self.min_poll_cpu_ns, d.min_poll_cpu_nanos, had_polls)
            self.min_poll_wall_ns = _merge_min(
                self.min_poll_wall_ns, d.min_poll_wall_nanos, had_polls
            )

    def merge(self, other: PoolTaskDetails) -> None:
        """Add another aggregate (client-go ``Merge``)."""
        if other.empty:
            return
        had_polls = self.poll_count > 0
        had_queue = self.total_queue_wait_ns > 0
        had_wake = self.total_wake_wait_ns > 0
        had_fair = self.fair_queue_sample_count > 0
        had_wall = self.task_wall_time_sample_count > 0
        had_tasks = self.task_count > 0
        o = other
        self.task_count += o.task_count
        self.poll_count += o.poll_count
        self.max_poll_count = max(self.max_poll_count, o.max_poll_count)
        self.min_poll_count = _merge_min(self.min_poll_count, o.min_poll_count, had_tasks)
        self.dispatch_count += o.dispatch_count
        self.max_dispatch_count = max(self.max_dispatch_count, o.max_dispatch_count)
        self.min_dispatch_count = _merge_min(
            self.min_dispatch_count, o.min_dispatch_count, had_tasks
        )
        self.total_wall_time_ns += o.total_wall_time_ns
        self.task_wall_time_sample_count += o.task_wall_time_sample_count
        self.max_task_wall_time_ns = max(self.max_task_wall_time_ns, o.max_task_wall_time_ns)
        if o.total_wall_time_ns > 0:
            self.min_task_wall_time_ns = _merge_min(
                self.min_task_wall_time_ns, o.min_task_wall_time_ns, had_wall
            )
        self.total_queue_wait_ns += o.total_queue_wait_ns
        self.max_queue_wait_ns = max(self.max_queue_wait_ns, o.max_queue_wait_ns)
        if o.total_queue_wait_ns > 0:
            self.min_queue_wait_ns = _merge_min(
                self.min_queue_wait_ns, o.min_queue_wait_ns, had_queue
            )
        self.total_wake_wait_ns += o.total_wake_wait_ns
        self.max_wake_wait_ns = max(self.max_wake_wait_ns, o.max_wake_wait_ns)
        if o.total_wake_wait_ns > 0:
            self.min_wake_wait_ns = _merge_min(self.min_wake_wait_ns, o.min_wake_wait_ns, had_wake)
        self.fair_queue_sample_count += o.fair_queue_sample_count
        self.total_fair_queue_waited_task_slices += o.total_fair_queue_waited_task_slices
        self.max_fair_queue_waited_task_slices = max(
            self.max_fair_queue_waited_task_slices, o.max_fair_queue_waited_task_slices
        )
        if o.fair_queue_sample_count > 0:
            self.min_fair_queue_waited_task_slices = _merge_min(
                self.min_fair_queue_waited_task_slices,
                o.min_fair_queue_waited_task_slices,
                had_fair,
            )
        self.poll_cpu_ns += o.poll_cpu_ns
        self.max_poll_cpu_ns = max(self.max_poll_cpu_ns, o.max_poll_cpu_ns)
        self.poll_wall_ns += o.poll_wall_ns
        self.max_poll_wall_ns = max(self.max_poll_wall_ns, o.max_poll_wall_ns)
        if o.poll_count > 0:
            self.min_poll_cpu_ns = _merge_min(self.min_poll_cpu_ns, o.min_poll_cpu_ns, had_polls)
            self.min_poll_wall_ns = _merge_min(self.min_poll_wall_ns, o.min_poll_wall_ns, had_polls)

    @staticmethod
    def _counts(name: str, total: int, divisor: int, high: int, low: int) -> str:
        avg = f", avg:{_average(total, divisor)}" if divisor > 0 else ""
        return f", {name}:{{total:{total}{avg}, max:{high}, min:{low}}}"

    @staticmethod
    def _times(name: str, total: int, samples: int, high: int, low: int) -> str:
        if total == 0:
            return ""
        avg = f", avg:{format_duration(total // samples)}" if samples > 0 else ""
        return (
            f", {name}:{{total:{format_duration(total)}{avg}, "
            f"max:{format_duration(high)}, min:{format_duration(low)}}}"
        )

    def __str__(self) -> str:
        if self.empty:
            return ""
        out = f"{{tasks:{self.task_count}"
        out += self._counts(
            "poll_count", self.poll_count, self.task_count, self.max_poll_count, self.min_poll_count
        )
        out += self._counts(
            "dispatch_count",
            self.dispatch_count,
            0,
            self.max_dispatch_count,
            self.min_dispatch_count,
        )
        out += self._times(
            "task_wall_time",
            self.total_wall_time_ns,
            self.task_wall_time_sample_count,
            self.max_task_wall_time_ns,
            self.min_task_wall_time_ns,
        )
        out += self._times(
            "queue_wait",
            self.total_queue_wait_ns,
            self.dispatch_count,
            self.max_queue_wait_ns,
            self.min_queue_wait_ns,
        )
        # Every task's first dispatch has no pending-to-wake interval before it.
        wake_waits = max(0, self.dispatch_count - self.task_count)
        out += self._times(
            "wake_wait",
            self.total_wake_wait_ns,
            wake_waits,
            self.max_wake_wait_ns,
            self.min_wake_wait_ns,
        )
        fair = self.fair_queue_sample_count > 0
        slices = self.total_fair_queue_waited_task_slices
        avg = f", avg:{_average(slices, self.fair_queue_sample_count)}" if fair else ""
        out += (
            f", fair_queue:{{enabled:{'true' if fair else 'false'}, waited_task_slices:"
            f"{{total:{slices}{avg}, max:{self.max_fair_queue_waited_task_slices}, "
            f"min:{self.min_fair_queue_waited_task_slices}}}}}"
        )
        out += self._times(
            "poll_cpu",
            self.poll_cpu_ns,
            self.poll_count,
            self.max_poll_cpu_ns,
            self.min_poll_cpu_ns,
        )
        out += self._times(
            "poll_wall",
            self.poll_wall_ns,
            self.poll_count,
            self.max_poll_wall_ns,
            self.min_poll_wall_ns,
        )
        return out + "}"


@dataclass(slots=True)
class SnapshotRuntimeStats:
    """What a snapshot's reads cost (client-go ``txnsnapshot.SnapshotRuntimeStats``).

    Give one to :meth:`tikv_txn.AsyncSnapshot.set_runtime_stats`; the snapshot adds to it
    as it reads. ``str()`` is client-go's ``String()``.

    Attributes:
        rpc_stats: RPCs per command and the errors they met, filled by the request
            pipeline (the snapshot's reads carry it in ``RequestOptions.rpc_stats``).
        backoff_sleep_ms: Milliseconds slept per backoff kind.
        backoff_times: Backoffs taken per kind.
        scan_detail: TiKV's storage figures.
        time_detail: TiKV's time figures.
        resolve_lock_ns: Time spent resolving the locks the reads met.
        read_pool: TiKV's read-pool figures.

    """

    rpc_stats: RPCRuntimeStats = field(default_factory=RPCRuntimeStats)
    backoff_sleep_ms: dict[str, int] = field(default_factory=dict)
    backoff_times: dict[str, int] = field(default_factory=dict)
    scan_detail: ScanDetail = field(default_factory=ScanDetail)
    time_detail: TimeDetail = field(default_factory=TimeDetail)
    resolve_lock_ns: int = 0
    read_pool: PoolTaskDetails = field(default_factory=PoolTaskDetails)

    def merge_region_request_stats(self, stats: RPCRuntimeStats) -> None:
        """Add a sender's RPC statistics (client-go ``mergeRegionRequestStats``)."""
        self.rpc_stats.merge(stats)

    def record_backoff(self, sleep_ms: dict[str, int], times: dict[str, int]) -> None:
        """Add a Backoffer's sleeps and counts per kind (client-go ``recordBackoffInfo``)."""
        for kind, ms in sleep_ms.items():
            self.backoff_sleep_ms[kind] = self.backoff_sleep_ms.get(kind, 0) + ms
        for kind, n in times.items():
            self.backoff_times[kind] = self.backoff_times.get(kind, 0) + n

    def merge_exec_details(self, details: kvrpcpb_pb2.ExecDetailsV2 | None) -> None:
        """Add a response's ``ExecDetailsV2`` (client-go ``mergeExecDetail``)."""
        if details is None:
            return
        self.time_detail.merge_exec_details(details)
        if details.HasField("scan_detail_v2"):
            self.scan_detail.merge_from_pb(details.scan_detail_v2)
        if details.HasField("read_pool_task_details"):
            self.read_pool.merge_from_pb(details.read_pool_task_details)

    def cmd_rpc_count(self, command: str) -> int:
        """How many RPCs of ``command`` were recorded (client-go ``GetCmdRPCCount``)."""
        return self.rpc_stats.rpc_count(command)

    def merge(self, other: SnapshotRuntimeStats) -> None:
        """Add every figure of ``other`` (client-go ``Merge``)."""
        self.merge_region_request_stats(other.rpc_stats)
        self.record_backoff(other.backoff_sleep_ms, other.backoff_times)
        self.scan_detail.merge(other.scan_detail)
        self.time_detail.merge(other.time_detail)
        self.resolve_lock_ns += other.resolve_lock_ns
        self.read_pool.merge(other.read_pool)

    def copy(self) -> SnapshotRuntimeStats:
        """An independent copy (client-go ``Clone``)."""
        return SnapshotRuntimeStats(
            self.rpc_stats.copy(),
            dict(self.backoff_sleep_ms),
            dict(self.backoff_times),
            dataclasses.replace(self.scan_detail),
            dataclasses.replace(self.time_detail),
            self.resolve_lock_ns,
            dataclasses.replace(self.read_pool),
        )

    def __str__(self) -> str:
        out = str(self.rpc_stats)
        for kind, n in self.backoff_times.items():
            if out:
                out += ","
            ms = self.backoff_sleep_ms.get(kind, 0)
            out += f"{kind}_backoff:{{num:{n}, total_time:{format_duration(ms * _NS_PER_MS)}}}"
        time_detail = str(self.time_detail)
        if time_detail:
            out += ", " + time_detail
        if self.resolve_lock_ns > 0:
            out += ", resolve_lock_time:" + format_duration(self.resolve_lock_ns)
        scan_detail = str(self.scan_detail)
        if scan_detail:
            out += ", " + scan_detail
        if not self.read_pool.empty:
            if out:
                out += ", "
            out += "read_pool:" + str(self.read_pool)
        return out
