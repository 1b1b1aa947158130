"""Opening this project's clients for the command line.

The raw client (:mod:`tikv_raw`) is used directly. The transactional client is reached
through :func:`connect_txn`, which finds ``tikv_txn.TransactionClient`` at run time and
raises :class:`TxnUnavailableError` when the installed ``tikv-txn`` does not provide it yet,
so the rest of the command keeps working and says so instead of crashing at import.
The protocols below name exactly the part of the transactional API (DESIGN §5) this
package calls.
"""

from __future__ import annotations

import concurrent.futures
import importlib
import inspect
import threading
from collections.abc import Sequence
from types import TracebackType
from typing import Any, Protocol, Self

from tikv_pd.errors import PDError
from tikv_raw import RawClient

__all__ = [
    "SnapshotLike",
    "TransactionLike",
    "TxnClientLike",
    "TxnUnavailableError",
    "connect_raw",
    "connect_txn",
    "txn_available",
]


class TxnUnavailableError(RuntimeError):
    """The installed ``tikv-txn`` has no ``TransactionClient`` (it is still being built)."""


class TransactionLike(Protocol):
    """The part of ``tikv_txn.Transaction`` the command line uses."""

    def get(self, key: bytes) -> bytes | None:
        """Read a key at the transaction's start timestamp (or from its buffer)."""

    def get_for_update(self, key: bytes) -> bytes | None:
        """Read a key and lock it (pessimistic transactions)."""

    def put(self, key: bytes, value: bytes) -> None:
        """Buffer a write."""

    def delete(self, key: bytes) -> None:
        """Buffer a delete."""

    def scan(self, start: bytes, end: bytes | None, *, limit: int) -> Any:
        """Return up to ``limit`` pairs of ``[start, end)``."""

    def commit(self) -> Any:
        """Commit (two-phase); returns the commit timestamp."""

    def rollback(self) -> None:
        """Roll back; nothing buffered is written."""


class SnapshotLike(Protocol):
    """The part of ``tikv_txn.Snapshot`` the command line uses."""

    def get(self, key: bytes) -> bytes | None:
        """Read a key at the snapshot's timestamp."""


class TxnClientLike(Protocol):
    """The part of ``tikv_txn.TransactionClient`` the command line uses."""

    def begin(self, *, pessimistic: bool = False) -> TransactionLike:
        """Start a transaction."""

    def snapshot(self, timestamp: int) -> SnapshotLike:
        """A read-only view at ``timestamp``."""

    def current_timestamp(self) -> int:
        """A fresh timestamp from PD."""

    def close(self) -> None:
        """Close the client."""

    def __enter__(self) -> Self:
        """Use as a context manager."""

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> Any:
        """Close on leaving the block."""


def _txn_class() -> Any:
    try:
        module = importlib.import_module("tikv_txn")
    except ImportError as exc:
        raise TxnUnavailableError(f"the tikv-txn package cannot be imported: {exc}") from None
    cls = getattr(module, "TransactionClient", None)
    if cls is None:
        raise TxnUnavailableError(
            "transactions are not available yet: the installed tikv-txn "
            f"{getattr(module, '__version__', '?')} has no TransactionClient"
        )
    return cls


def txn_available() -> bool:
    """Whether the installed ``tikv-txn`` provides ``TransactionClient``."""
    try:
        _txn_class()
    except TxnUnavailableError:
        return False
    return True


def connect_raw(
    endpoints: Sequence[str],
    *,
    api_version: int = 1,
    atomic: bool = False,
    timeout: float | None = None,
) -> RawClient:
    """Connect a blocking raw client to the PD ``endpoints``."""
    return RawClient.connect(
        list(endpoints), api_version=api_version, atomic=atomic, timeout=timeout
    )


def connect_txn(
    endpoints: Sequence[str], *, api_version: int = 1, timeout: float | None = None
) -> TxnClientLike:
    """Connect a blocking transactional client to the PD ``endpoints``.

    ``timeout`` bounds the connection: passed on when the installed client accepts it,
    otherwise enforced here (a connection that completes later is closed at once).

    Raises:
        TxnUnavailableError: ``tikv_txn.TransactionClient`` does not exist (yet).
        tikv_pd.errors.PDError: PD was not reached within ``timeout``.

    """
    cls = _txn_class()
    eps = list(endpoints)
    if timeout is None:
        client: TxnClientLike = cls.connect(eps, api_version=api_version)
        return client
    if "timeout" in inspect.signature(cls.connect).parameters:
        bounded: TxnClientLike = cls.connect(eps, api_version=api_version, timeout=timeout)
        return bounded
    # A daemon thread (not an executor, whose threads are joined at exit): a process that
    # gives up on PD must not wait for the client's own discovery deadline.
    future: concurrent.futures.Future[Any] = concurrent.futures.Future()

    def attempt() -> None:
        try:
            future.set_result(cls.connect(eps, api_version=api_version))
        except BaseException as exc:
            future.set_exception(exc)

    threading.Thread(target=attempt, name="tikv-cli-connect", daemon=True).start()
    try:
        client = future.result(timeout)
    except concurrent.futures.TimeoutError:
        future.add_done_callback(_close_late_client)
        raise PDError(f"no connection to PD {', '.join(eps)} within {timeout} s") from None
    return client


def _close_late_client(future: concurrent.futures.Future[Any]) -> None:
    if not future.cancelled() and future.exception() is None:
        future.result().close()
