"""TimeDetail and Go duration text: client-go TestTimeDetail, TestTimeDetailMerge and ours."""

from __future__ import annotations

import pytest
from tikv_pd.execdetails import TimeDetail, format_duration, go_duration
from tikv_proto import kvrpcpb_pb2

MS = 1_000_000
US = 1_000
S = 1_000_000_000


def test_time_detail_string_matches_client_go() -> None:
    # client-go util/misc_test.go TestTimeDetail.
    detail = TimeDetail(kv_read_wall_time_ns=2 * MS, total_rpc_wall_time_ns=3 * MS)
    assert str(detail) == "time_detail: {total_kv_read_wall_time: 2ms, tikv_wall_time: 3ms}"
    detail = TimeDetail(
        process_time_ns=2 * MS,
        suspend_time_ns=3 * MS,
        wait_time_ns=4 * MS,
        kv_read_wall_time_ns=5 * MS,
        kv_grpc_process_time_ns=6 * MS,
        kv_grpc_wait_time_ns=7 * MS,
        total_rpc_wall_time_ns=8 * MS,
    )
    assert str(detail) == (
        "time_detail: {total_process_time: 2ms, total_suspend_time: 3ms, total_wait_time: 4ms, "
        "total_kv_read_wall_time: 5ms, tikv_grpc_process_time: 6ms, tikv_grpc_wait_time: 7ms, "
        "tikv_wall_time: 8ms}"
    )


def test_time_detail_string_edge_cases() -> None:
    assert str(TimeDetail()) == ""
    assert str(TimeDetail(wait_time_ns=1_500 * MS)) == "time_detail: {total_wait_time: 1.5s}"
    assert str(TimeDetail(process_time_ns=1_234_567)) == "time_detail: {total_process_time: 1.23ms}"
    assert str(TimeDetail(suspend_time_ns=750)) == "time_detail: {total_suspend_time: 750ns}"


def test_time_detail_merge_matches_client_go() -> None:
    # client-go util/execdetails_test.go TestTimeDetailMerge / TestTimeDetailMergeNil.
    a = TimeDetail(10 * MS, 2 * MS, 5 * MS, 3 * MS, 1 * MS, 4 * MS, 20 * MS)
    b = TimeDetail(15 * MS, 3 * MS, 7 * MS, 4 * MS, 2 * MS, 5 * MS, 30 * MS)
    a.merge(b)
    assert a == TimeDetail(25 * MS, 5 * MS, 12 * MS, 7 * MS, 3 * MS, 9 * MS, 50 * MS)
    a.merge(None)
    assert a.process_time_ns == 25 * MS
    assert b == TimeDetail(15 * MS, 3 * MS, 7 * MS, 4 * MS, 2 * MS, 5 * MS, 30 * MS)


def test_from_exec_details_prefers_v2() -> None:
    pb = kvrpcpb_pb2.ExecDetailsV2(
        time_detail=kvrpcpb_pb2.TimeDetail(
            wait_wall_time_ms=100, process_wall_time_ms=100, kv_read_wall_time_ms=100
        ),
        time_detail_v2=kvrpcpb_pb2.TimeDetailV2(
            wait_wall_time_ns=1,
            process_wall_time_ns=2,
            process_suspend_wall_time_ns=3,
            kv_read_wall_time_ns=4,
            total_rpc_wall_time_ns=5,
            kv_grpc_process_time_ns=6,
            kv_grpc_wait_time_ns=7,
        ),
    )
    assert TimeDetail.from_exec_details(pb) == TimeDetail(
        process_time_ns=2,
        suspend_time_ns=3,
        wait_time_ns=1,
        kv_read_wall_time_ns=4,
        kv_grpc_process_time_ns=6,
        kv_grpc_wait_time_ns=7,
        total_rpc_wall_time_ns=5,
    )


def test_from_exec_details_falls_back_to_the_millisecond_message() -> None:
    pb = kvrpcpb_pb2.ExecDetailsV2(
        time_detail=kvrpcpb_pb2.TimeDetail(
            wait_wall_time_ms=4,
            process_wall_time_ms=2,
            kv_read_wall_time_ms=5,
            total_rpc_wall_time_ns=8 * MS + 1,
        )
    )
    detail = TimeDetail.from_exec_details(pb)
    assert detail == TimeDetail(
        process_time_ns=2 * MS,
        wait_time_ns=4 * MS,
        kv_read_wall_time_ns=5 * MS,
        total_rpc_wall_time_ns=8 * MS + 1,
    )
    # Accumulates over responses.
    detail.merge_from_pb(None, pb.time_detail)
    assert detail.process_time_ns == 4 * MS
    assert detail.total_rpc_wall_time_ns == 16 * MS + 2
    assert TimeDetail.from_exec_details(None) == TimeDetail()
    assert TimeDetail.from_exec_details(kvrpcpb_pb2.ExecDetailsV2()) == TimeDetail()


def test_time_detail_validates_fields() -> None:
    with pytest.raises(TypeError, match="wait_time_ns must be an int of nanoseconds, got float"):
        TimeDetail(wait_time_ns=1.5)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="process_time_ns"):
        TimeDetail(process_time_ns=True)
    with pytest.raises(ValueError, match="total_rpc_wall_time_ns must not be negative, got -1"):
        TimeDetail(total_rpc_wall_time_ns=-1)
    with pytest.raises(TypeError, match="other must be a TimeDetail, got int"):
        TimeDetail().merge(3)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("ns", "text"),
    [
        # Go's time.Duration.String, as printed by Go.
        (0, "0s"),
        (1, "1ns"),
        (999, "999ns"),
        (US, "1µs"),
        (1_500, "1.5µs"),
        (1_100 * US, "1.1ms"),
        (2 * MS, "2ms"),
        (999_999_999, "999.999999ms"),
        (S, "1s"),
        (1_500 * MS, "1.5s"),
        (S + 1, "1.000000001s"),
        (60 * S, "1m0s"),
        (90 * S, "1m30s"),
        (3_600 * S, "1h0m0s"),
        (3_661 * S + 500 * MS, "1h1m1.5s"),
        (-1_500 * MS, "-1.5s"),
        (-5, "-5ns"),
        (2**63 - 1, "2562047h47m16.854775807s"),
    ],
)
def test_go_duration(ns: int, text: str) -> None:
    assert go_duration(ns) == text


@pytest.mark.parametrize(
    ("ns", "text"),
    [
        # client-go util.FormatDuration: two decimals below ten units, one above.
        (0, "0s"),
        (US, "1µs"),
        (1_234, "1.23µs"),
        (12_345, "12.3µs"),
        (1_234_567, "1.23ms"),
        (12_345_678, "12.3ms"),
        (1_005 * MS, "1.01s"),  # half away from zero, as Go's math.Round
        (1_234_567_890, "1.23s"),
        (12_345_678_900, "12.3s"),
        (100 * S, "1m40s"),
        (2 * MS, "2ms"),
        (9_999 * US, "10ms"),
    ],
)
def test_format_duration(ns: int, text: str) -> None:
    assert format_duration(ns) == text


def test_duration_helpers_reject_non_ints() -> None:
    with pytest.raises(TypeError, match="ns must be an int"):
        go_duration(1.0)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="ns must be an int"):
        format_duration("1ms")  # type: ignore[arg-type]
