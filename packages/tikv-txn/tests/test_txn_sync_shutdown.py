"""Opening and closing sync TransactionClients logs nothing.

A sync client's private loop uses grpc.aio, whose completion-queue poller is shared by
the process: closing the loop while gRPC still owes it completions used to log
"Exception in callback PollerCompletionQueue._handle_events ... Event loop is closed"
from another loop (grpc/grpc#25364). See ``tikv_pd.sync``.
"""

from __future__ import annotations

import gc
import logging

import pytest
from tikv_mockstore import MockCluster
from tikv_txn import TransactionClient


def test_open_close_cycles_log_nothing(
    caplog: pytest.LogCaptureFixture, capfd: pytest.CaptureFixture[str]
) -> None:
    with (
        MockCluster(stores=2, regions=3) as cluster,
        caplog.at_level(logging.DEBUG, logger="asyncio"),
    ):
        # A client that stays open: its loop reads grpc's events for the others too.
        keeper = TransactionClient.connect(cluster.pd_endpoints)
        try:
            for i in range(5):
                key = b"k%d" % i
                with TransactionClient.connect(cluster.pd_endpoints) as client:
                    with client.begin() as txn:
                        txn.put(key, b"v")
                    # Closed with a pessimistic transaction still open (its lock TTL
                    # keeper running): the close must not leave gRPC work behind.
                    open_txn = client.begin(pessimistic=True)
                    assert open_txn.get_for_update(key) == b"v"
                # A client nobody closes: its loop thread is stopped by the finalizer.
                forgotten = TransactionClient.connect(cluster.pd_endpoints)
                assert forgotten.snapshot(forgotten.current_timestamp()).get(key) == b"v"
                thread = forgotten.loop_thread.thread
                del forgotten
                gc.collect()
                thread.join(30)
                assert not thread.is_alive()
                assert keeper.snapshot(keeper.current_timestamp()).get(key) == b"v"
        finally:
            keeper.close()
    logged = "\n".join(r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING)
    _, err = capfd.readouterr()
    for text in (logged, err):
        assert "Event loop is closed" not in text
        assert "_handle_events" not in text
