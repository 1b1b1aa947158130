"""``tikv cluster start`` in the foreground, and the benchmark's server process."""

from __future__ import annotations

import selectors
import signal
import subprocess
import sys
import time

from tikv_cli.bench.measure import cpu_seconds_of
from tikv_cli.bench.server import ServerProcess
from tikv_cli.cluster import serve_arguments
from tikv_raw import RawClient


def test_serve_arguments() -> None:
    assert serve_arguments(
        host="127.0.0.1", pd_port=0, stores=2, regions=4, api_version="v1ttl"
    ) == [
        "serve",
        "--host",
        "127.0.0.1",
        "--pd-port",
        "0",
        "--stores",
        "2",
        "--regions",
        "4",
        "--api-version",
        "V1TTL",
    ]


def _read_line(proc: subprocess.Popen[str], prefix: str, timeout: float) -> str:
    assert proc.stdout is not None
    deadline = time.monotonic() + timeout
    with selectors.DefaultSelector() as sel:
        sel.register(proc.stdout, selectors.EVENT_READ)
        while time.monotonic() < deadline:
            if sel.select(timeout=0.2):
                line = proc.stdout.readline()
                if not line:
                    break
                if line.startswith(prefix):
                    return line
            elif proc.poll() is not None:
                break
    raise AssertionError(f"no line starting with {prefix!r} within {timeout} s")


def test_cluster_start_serves_until_interrupted() -> None:
    proc = subprocess.Popen(
        [
            *(sys.executable, "-m", "tikv_cli.main", "cluster", "start", "--pd-port", "0"),
            *("--stores", "2", "--regions", "4", "--api-version", "V1TTL"),
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        line = _read_line(proc, "PD listening on ", timeout=60)
        pd = line.removeprefix("PD listening on ").strip()
        with RawClient.connect([pd]) as client:
            client.put(b"k", b"v", ttl=30)
            assert client.get(b"k") == b"v"
            assert client.get_key_ttl(b"k") is not None
        proc.send_signal(signal.SIGINT)
        assert proc.wait(30) == 0
        assert proc.stderr is not None
        err = proc.stderr.read()
        assert "press Ctrl-C to stop the cluster" in err
        assert err.count("listening on") == 2  # one line per store
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)
        for stream in (proc.stdout, proc.stderr):
            if stream is not None:
                stream.close()


def test_server_process_for_benchmarks() -> None:
    with ServerProcess(stores=1, regions=2) as server:
        assert server.endpoints[0].startswith("127.0.0.1:")
        with RawClient.connect(server.endpoints) as client:
            client.put(b"a", b"1")
            assert client.get(b"a") == b"1"
        assert cpu_seconds_of(server.pid) is not None
    assert cpu_seconds_of(server.pid) is None  # stopped and reaped
