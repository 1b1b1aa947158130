"""Opening this project's clients for the command line.

:func:`connect_raw` opens a :class:`tikv_raw.RawClient`, :func:`connect_txn` a
:class:`tikv_txn.TransactionClient`; both give up on PD after ``timeout`` seconds with a
:class:`tikv_pd.errors.PDError`, so an unreachable cluster fails a command quickly.
"""

from __future__ import annotations

import concurrent.futures
import threading
from collections.abc import Sequence

from tikv_pd.errors import PDError
from tikv_raw import RawClient
from tikv_txn import TransactionClient

__all__ = ["connect_raw", "connect_txn"]


def connect_raw(
    endpoints: Sequence[str],
    *,
    api_version: int = 1,
    atomic: bool = False,
    timeout: float | None = None,
) -> RawClient:
    """Connect a blocking raw client to the PD ``endpoints``.

    Raises:
        tikv_pd.errors.PDError: PD was not reached within ``timeout``.

    """
    return RawClient.connect(
        list(endpoints), api_version=api_version, atomic=atomic, timeout=timeout
    )


def connect_txn(
    endpoints: Sequence[str], *, api_version: int = 1, timeout: float | None = None
) -> TransactionClient:
    """Connect a blocking transactional client to the PD ``endpoints``.

    ``TransactionClient.connect`` keeps retrying PD discovery for the PD client's own
    deadline (10 s); ``timeout`` bounds it here: the connection runs on a daemon thread
    and a client that connects after the caller gave up is closed at once.

    Raises:
        tikv_pd.errors.PDError: PD was not reached within ``timeout`` (or refused).

    """
    eps = list(endpoints)
    if timeout is None:
        return TransactionClient.connect(eps, api_version=api_version)
    # A daemon thread (not an executor, whose threads are joined at exit): a process that
    # gives up on PD must not wait for the client's own discovery deadline.
    future: concurrent.futures.Future[TransactionClient] = concurrent.futures.Future()

    def attempt() -> None:
        try:
            future.set_result(TransactionClient.connect(eps, api_version=api_version))
        except BaseException as exc:
            future.set_exception(exc)

    threading.Thread(target=attempt, name="tikv-cli-connect", daemon=True).start()
    try:
        return future.result(timeout)
    except concurrent.futures.TimeoutError:
        future.add_done_callback(_close_late_client)
        raise PDError(f"no connection to PD {', '.join(eps)} within {timeout} s") from None


def _close_late_client(future: concurrent.futures.Future[TransactionClient]) -> None:
    if not future.cancelled() and future.exception() is None:
        future.result().close()
