"""Logging: the ``tikv`` hierarchy, client-go's slow-request rules, key redaction."""

from __future__ import annotations

import logging
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from tikv_mockstore import MockCluster
from tikv_pd import locator, logs, oracle, pd_client, pd_oracle, request, transport
from tikv_pd.errors import RegionError, set_redact_keys
from tikv_pd.logs import (
    SLOW_BACKOFF_MS,
    SLOW_REQUEST_SECONDS,
    SLOW_SEND_REQUEST_SECONDS,
    get_logger,
    log_request_outcome,
    redact_key,
)
from tikv_raw import AsyncRawClient

sys.path.insert(0, str(Path(__file__).parent))  # the shared request-pipeline fakes


@pytest.fixture
def redaction_off() -> Iterator[None]:
    set_redact_keys(False)
    yield
    set_redact_keys(False)


def test_client_go_thresholds() -> None:
    # internal/locate/region_request.go slowLogSendReqTime, its 1000 ms backoff rule, and
    # txnkv/transaction/2pc.go slowRequestThreshold.
    assert SLOW_SEND_REQUEST_SECONDS == 0.1
    assert SLOW_BACKOFF_MS == 1000
    assert SLOW_REQUEST_SECONDS == 60.0


def test_module_loggers_live_under_tikv() -> None:
    assert get_logger("request").name == "tikv.request"
    names = {
        request._log.name,
        pd_client.logger.name,
        locator.logger.name,
        oracle._log.name,
        pd_oracle.logger.name,
        transport._log.name,
    }
    assert names == {
        "tikv.request",
        "tikv.pd",
        "tikv.region_cache",
        "tikv.oracle",
        "tikv.transport",
    }
    assert all(n.split(".")[1] in logs.COMPONENTS for n in names)
    from tikv_pd import rangetask
    from tikv_txn import _runtime, committer, lock_resolver

    assert rangetask._log.name == "tikv.rangetask"
    assert {_runtime._log.name, committer._log.name, lock_resolver._log.name} == {
        "tikv.txn",
        "tikv.txn.committer",
        "tikv.txn.lock_resolver",
    }


def outcome(**overrides: object) -> bool:
    args: dict[str, object] = {
        "command": "RawGet",
        "elapsed_s": 0.01,
        "attempts": 1,
        "retries": 0,
        "backoff_ms": 0,
        "regions": 1,
        "last_error": None,
        "failed": None,
    }
    args.update(overrides)
    return log_request_outcome(**args)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("overrides", "logged"),
    [
        ({}, False),  # fast and clean
        ({"elapsed_s": 5.0}, False),  # slow-ish but clean: under the 1 min threshold
        ({"retries": 1, "elapsed_s": 0.05}, False),  # troubled but fast, little backoff
        ({"retries": 1, "elapsed_s": 0.2}, True),  # troubled and > 100 ms
        ({"retries": 2, "elapsed_s": 0.05, "backoff_ms": 1500}, True),  # > 1 s of backoff
        ({"elapsed_s": 61.0}, True),  # any request slower than 1 min
        ({"failed": TimeoutError("x"), "elapsed_s": 0.3}, True),  # failed after > 100 ms
    ],
)
def test_when_requests_are_logged(
    caplog: pytest.LogCaptureFixture, overrides: dict[str, object], logged: bool
) -> None:
    with caplog.at_level(logging.WARNING, logger="tikv"):
        assert outcome(**overrides) is logged
    records = [r for r in caplog.records if r.name == "tikv.request"]
    assert len(records) == (1 if logged else 0)
    if logged:
        facts = records[0].tikv  # type: ignore[attr-defined]
        assert facts["command"] == "RawGet"
        assert facts["retries"] == overrides.get("retries", 0)
        assert records[0].levelno == logging.WARNING


def test_no_work_when_warnings_are_disabled(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.ERROR, logger="tikv"):
        assert outcome(retries=1, elapsed_s=0.5) is False
    assert caplog.records == []


def test_keys_are_redacted_in_log_messages(
    caplog: pytest.LogCaptureFixture, redaction_off: None
) -> None:
    secret = b"user:4711:ssn"
    err = RegionError("key_not_in_region", 9, f"key {redact_key(secret)} is not in region 9")
    with caplog.at_level(logging.WARNING, logger="tikv"):
        outcome(retries=1, elapsed_s=0.5, first_key=secret, last_error=err)
    assert "user:4711" in caplog.records[-1].getMessage()
    caplog.clear()
    set_redact_keys(True)
    err = RegionError("key_not_in_region", 9, f"key {redact_key(secret)} is not in region 9")
    with caplog.at_level(logging.WARNING, logger="tikv"):
        outcome(retries=1, elapsed_s=0.5, first_key=secret, last_error=err)
    message = caplog.records[-1].getMessage()
    assert "4711" not in message
    assert "key=?" in message
    assert caplog.records[-1].tikv["keys_redacted"] is True  # type: ignore[attr-defined]
    assert redact_key(secret) == "?"


async def test_troubled_request_is_logged_end_to_end(caplog: pytest.LogCaptureFixture) -> None:
    with MockCluster(stores=1) as cluster:
        async with await AsyncRawClient.connect(cluster.pd_endpoints) as client:
            await client.put(b"k", b"v")
            # The store answers the first RawGet late (150 ms) with a region error: the
            # request meets an error and takes longer than client-go's 100 ms.
            cluster.faults.add("RawGet", region_error="region_not_found", delay=0.15, times=1)
            with caplog.at_level(logging.WARNING, logger="tikv"):
                assert await client.get(b"k") == b"v"
                await client.get(b"k")  # clean and fast: not logged
    records = [r for r in caplog.records if r.name == "tikv.request"]
    assert len(records) == 1
    facts = records[0].tikv  # type: ignore[attr-defined]
    assert facts["command"] == "RawGet"
    assert facts["retries"] == 1
    assert facts["attempts"] == 2
    assert facts["failed"] is False
    assert facts["last_error"] == "RegionError"
    assert facts["elapsed_ms"] >= 150
    assert "request met errors: RawGet" in records[0].getMessage()


class SlowClock:
    """Stands in for ``time`` in tikv_pd.request: every reading is 0.5 s later."""

    def __init__(self) -> None:
        self.now = 0.0

    def monotonic(self) -> float:
        self.now += 0.5
        return self.now


async def test_key_errors_of_a_handler_are_not_send_failures(
    caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    from _request_fakes import FakeCluster, FakeLocator, FakeTransport, make_region
    from tikv_pd.errors import KeyExistsError
    from tikv_pd.request import KeySharder, RequestSender
    from tikv_proto import errorpb_pb2, kvrpcpb_pb2

    cluster = FakeCluster([make_region(1, b"", b"")])
    transport = FakeTransport(cluster)
    sender = RequestSender(FakeLocator(cluster), transport)
    monkeypatch.setattr(request, "time", SlowClock())  # every request "takes" 0.5 s

    def build(region: object, key: bytes) -> kvrpcpb_pb2.RawGetRequest:
        return kvrpcpb_pb2.RawGetRequest(key=key)

    def exists(region: object, key: bytes, response: object) -> None:
        raise KeyExistsError(key)

    with caplog.at_level(logging.WARNING, logger="tikv"):
        # A key error raised by the handler: the request itself went fine (client-go logs
        # only RPC-level failures), so nothing is logged although it was "slow".
        with pytest.raises(KeyExistsError):
            await sender.execute("RawGet", KeySharder(), b"k", build, exists)
        assert [r for r in caplog.records if r.name == "tikv.request"] == []
        # The same after a region error and a retry: logged, as a troubled request.
        transport.faults["RawGet"] = [
            errorpb_pb2.Error(message="x", region_not_found=errorpb_pb2.RegionNotFound())
        ]
        with pytest.raises(KeyExistsError):
            await sender.execute("RawGet", KeySharder(), b"k", build, exists)
    records = [r for r in caplog.records if r.name == "tikv.request"]
    assert len(records) == 1
    facts = records[0].tikv  # type: ignore[attr-defined]
    assert (facts["retries"], facts["failed"]) == (1, False)
