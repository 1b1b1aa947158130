"""Opening and closing sync RawClients logs nothing.

A sync client's private loop uses grpc.aio, whose completion-queue poller is shared by
the process: closing the loop while gRPC still owes it completions used to log
"Exception in callback PollerCompletionQueue._handle_events ... Event loop is closed"
from another loop (grpc/grpc#25364). See ``tikv_pd.sync``.
"""

from __future__ import annotations

import gc
import logging
import threading

import pytest
from tikv_mockstore import MockCluster
from tikv_raw import RawClient


def _loop_thread(client: RawClient) -> threading.Thread:
    return client._loop.thread  # the facade keeps no public handle on it


def test_open_close_cycles_log_nothing(
    caplog: pytest.LogCaptureFixture, capfd: pytest.CaptureFixture[str]
) -> None:
    with (
        MockCluster(stores=2, split_raw=[b"m"]) as cluster,
        caplog.at_level(logging.DEBUG, logger="asyncio"),
    ):
        # A client that stays open: its loop reads grpc's events for the others too.
        keeper = RawClient.connect(cluster.pd_endpoints)
        try:
            for i in range(6):
                key = b"k%d" % i
                with RawClient.connect(cluster.pd_endpoints) as client:
                    client.put(key, b"v")
                    assert client.get(key) == b"v"
                    assert dict(client.scan(b"k", b"l", limit=100)) == {
                        b"k%d" % j: b"v" for j in range(i + 1)
                    }
                # A client nobody closes: its loop thread is stopped by the finalizer.
                forgotten = RawClient.connect(cluster.pd_endpoints)
                assert forgotten.get(key) == b"v"
                thread = _loop_thread(forgotten)
                del forgotten
                gc.collect()
                thread.join(30)
                assert not thread.is_alive()
                assert keeper.get(key) == b"v"
        finally:
            keeper.close()
    logged = "\n".join(r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING)
    _, err = capfd.readouterr()
    for text in (logged, err):
        assert "Event loop is closed" not in text
        assert "_handle_events" not in text
