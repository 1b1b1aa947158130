"""The ``tikv-mockstore serve`` command."""

from __future__ import annotations

import signal
import subprocess
import sys

import grpc
import pytest
from tikv_mockstore.cli import build_parser, main, parse_key
from tikv_proto import pdpb_pb2, pdpb_pb2_grpc


def test_serve_prints_address_and_stops_on_sigint() -> None:
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "tikv_mockstore.cli",
            "serve",
            "--pd-port",
            "0",
            "--stores",
            "2",
            "--split-raw",
            "m",
            "--split-txn",
            "t\\x00",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()
        assert line.startswith("PD listening on 127.0.0.1:"), line
        address = line.split()[-1]
        with grpc.insecure_channel(address) as ch:
            pd = pdpb_pb2_grpc.PDStub(ch)
            members = pd.GetMembers(pdpb_pb2.GetMembersRequest(), timeout=10)
            header = pdpb_pb2.RequestHeader(cluster_id=members.header.cluster_id)
            region = pd.GetRegion(pdpb_pb2.GetRegionRequest(header=header, region_key=b"n"))
            assert region.region.start_key == b"m"
            stores = pd.GetAllStores(pdpb_pb2.GetAllStoresRequest(header=header))
            assert len(stores.stores) == 2
        proc.send_signal(signal.SIGINT)
        assert proc.wait(timeout=30) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        for stream in (proc.stdout, proc.stderr):
            if stream is not None:
                stream.close()


def test_parse_key_escapes() -> None:
    assert parse_key("a\\x00b") == b"a\x00b"
    assert parse_key("plain") == b"plain"


def test_bad_arguments_exit_2(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        build_parser().parse_args(["serve", "--pd-port", "70000"])
    assert exc.value.code == 2
    with pytest.raises(SystemExit):
        main(["serve", "--stores", "0"])
    assert "must be >= 1" in capsys.readouterr().err


def test_split_flags_accumulate() -> None:
    args = build_parser().parse_args(
        ["serve", "--split-raw", "a", "b", "--split-raw", "c", "--split-txn", "x"]
    )
    assert args.split_raw == [b"a", b"b", b"c"]
    assert args.split_txn == [b"x"]
