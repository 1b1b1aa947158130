"""Logging: the ``tikv`` logger hierarchy, slow-request warnings, key redaction.

Every module logs under ``tikv``: ``tikv.pd`` (PD client, TSO), ``tikv.oracle``,
``tikv.region_cache`` (locator and cache), ``tikv.request`` (the request pipeline),
``tikv.transport`` (store connections, BatchCommands), ``tikv.rangetask``, ``tikv.raw``,
``tikv.txn`` (and its ``tikv.txn.committer``, ``tikv.txn.lock_resolver``, ...). One
``logging.getLogger("tikv")`` handler or level therefore controls the whole client.
Nothing is configured here: the library only emits records (stdlib convention).

Records carry their facts twice: in the message, for people, and as a dict in the
record's ``tikv`` attribute (``extra={"tikv": {...}}``), for structured (JSON) handlers.
Keys in messages go through :func:`tikv_pd.errors.format_key`, so
:func:`tikv_pd.errors.set_redact_keys` hides them in logs exactly as in error messages
(client-go ``util/redact``); the ``tikv`` dict carries no keys.

Slow requests (client-go ``internal/locate/region_request.go``): a request part that met
errors (region errors, send failures) is logged at WARNING when it took longer than
:data:`SLOW_SEND_REQUEST_SECONDS` (100 ms) or slept more than :data:`SLOW_BACKOFF_MS`
(1 s) in backoffs; any request slower than :data:`SLOW_REQUEST_SECONDS` (1 min, client-go's
2PC ``slowRequestThreshold`` in ``txnkv/transaction/2pc.go``) is logged at WARNING too.
"""

from __future__ import annotations

import logging
from typing import Any

from tikv_pd.errors import format_key, redact_keys_enabled

__all__ = [
    "COMPONENTS",
    "ROOT_LOGGER",
    "SLOW_BACKOFF_MS",
    "SLOW_REQUEST_SECONDS",
    "SLOW_SEND_REQUEST_SECONDS",
    "get_logger",
    "log_request_outcome",
    "redact_key",
]

#: The root of every logger of the client.
ROOT_LOGGER = "tikv"
#: The components that log (``tikv.<component>``).
COMPONENTS = (
    "pd",
    "oracle",
    "region_cache",
    "request",
    "transport",
    "rangetask",
    "raw",
    "txn",
)

#: client-go ``slowLogSendReqTime``: a request that met errors and took longer than this
#: is logged.
SLOW_SEND_REQUEST_SECONDS = 0.1
#: client-go logs such a request also when its Backoffer slept more than this (ms).
SLOW_BACKOFF_MS = 1000
#: client-go 2PC ``slowRequestThreshold``: any single request slower than this is logged.
SLOW_REQUEST_SECONDS = 60.0


def get_logger(component: str) -> logging.Logger:
    """The logger of ``component`` (``"pd"``, ``"request"``, ...): ``tikv.<component>``."""
    return logging.getLogger(f"{ROOT_LOGGER}.{component}")


def redact_key(key: bytes | None) -> str:
    """Format a key for a log message, honouring :func:`tikv_pd.errors.set_redact_keys`.

    The same formatting as error messages (``repr``, truncated, ``?`` when redacted).
    """
    return format_key(key)


_request_log = get_logger("request")


def log_request_outcome(
    *,
    command: str,
    elapsed_s: float,
    attempts: int,
    retries: int,
    backoff_ms: int,
    regions: int,
    last_error: BaseException | None,
    failed: BaseException | None,
    first_key: bytes | None = None,
    logger: logging.Logger | None = None,
) -> bool:
    """Log a finished request if client-go would (see the module docstring).

    Called by the request pipeline once per request; it decides cheaply and returns
    whether it logged.

    Args:
        command: The command.
        elapsed_s: Seconds from the first send to the outcome.
        attempts: Attempts sent (all regions, retries included).
        retries: Attempts that met a region error or a send failure.
        backoff_ms: Milliseconds slept in backoffs.
        regions: Request parts (regions) the request covered.
        last_error: The last region error / send failure met (``None``: none).
        failed: The error the request finally failed with (``None``: it succeeded).
        first_key: A key of the request, for the message (redacted if enabled).
        logger: Where to log (default ``tikv.request``).

    """
    troubled = retries > 0 or failed is not None
    slow = elapsed_s > SLOW_REQUEST_SECONDS
    if not slow and not (
        troubled and (elapsed_s > SLOW_SEND_REQUEST_SECONDS or backoff_ms > SLOW_BACKOFF_MS)
    ):
        return False
    log = logger if logger is not None else _request_log
    if not log.isEnabledFor(logging.WARNING):
        return False
    facts: dict[str, Any] = {
        "command": command,
        "elapsed_ms": round(elapsed_s * 1000, 3),
        "attempts": attempts,
        "retries": retries,
        "backoff_ms": backoff_ms,
        "regions": regions,
        "last_error": type(last_error).__name__ if last_error is not None else None,
        "failed": failed is not None,
        "keys_redacted": redact_keys_enabled(),
    }
    what = "slow request" if slow else "request met errors"
    key_text = f" key={format_key(first_key)}" if first_key is not None else ""
    outcome = f"failed: {failed}" if failed is not None else "succeeded"
    cause = f"; last error: {last_error}" if last_error is not None else ""
    log.warning(
        "%s: %s%s took %.1f ms (%d attempts, %d retries, %d ms backoff, %d regions), %s%s",
        what,
        command,
        key_text,
        elapsed_s * 1000,
        attempts,
        retries,
        backoff_ms,
        regions,
        outcome,
        cause,
        extra={"tikv": facts},
    )
    return True
