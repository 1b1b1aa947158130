"""Transactional client for TiKV.

Percolator two-phase commit, 1PC and async commit over the shared ``tikv_pd`` request
pipeline, with client-go's lock resolution; pessimistic transactions
(``begin(pessimistic=True)``: ``get_for_update``, ``lock_keys``, lock waits, deadlock
detection; :mod:`tikv_txn.pessimistic`); pipelined DML for transactions of any size
(``begin(options=TransactionOptions(pipelined=True))``: the buffer is flushed to TiKV
while the transaction runs; :mod:`tikv_txn.pipelined`).

Errors are the hierarchy of :mod:`tikv_pd.errors`, re-exported here.
"""

from tikv_pd.config import LOCK_ALWAYS_WAIT, LOCK_NO_WAIT, Config, TransactionOptions
from tikv_pd.errors import (
    AssertionFailedError,
    ClientClosedError,
    CommitTsExpiredError,
    CommitTsLagError,
    CommitTsTooLargeError,
    DeadlockError,
    GCTooEarlyError,
    KeyExistsError,
    KeyIsLockedError,
    LockInfo,
    LockWaitTimeoutError,
    PDError,
    RegionError,
    TiKVError,
    TimeoutError,
    TransactionClosedError,
    TxnError,
    TxnLockNotFoundError,
    TxnNotFoundError,
    TxnTooLargeError,
    UndeterminedError,
    WriteConflictError,
)

from tikv_txn import _observe  # noqa: F401  (installs the committer's observability hooks)
from tikv_txn._sync import Snapshot, Transaction, TransactionClient
from tikv_txn.client import AsyncTransactionClient
from tikv_txn.delete_range import DeleteRangeTask
from tikv_txn.gc import GCResult
from tikv_txn.lock_resolver import LockResolver, ResolveResult
from tikv_txn.pipelined import AsyncPipelinedTransaction, FlushThresholds
from tikv_txn.runtime_stats import SnapshotRuntimeStats
from tikv_txn.snapshot import AsyncSnapshot, ValueEntry
from tikv_txn.transaction import AsyncTransaction, KeyAssertion

__all__ = [
    "LOCK_ALWAYS_WAIT",
    "LOCK_NO_WAIT",
    "AssertionFailedError",
    "AsyncPipelinedTransaction",
    "AsyncSnapshot",
    "AsyncTransaction",
    "AsyncTransactionClient",
    "ClientClosedError",
    "CommitTsExpiredError",
    "CommitTsLagError",
    "CommitTsTooLargeError",
    "Config",
    "DeadlockError",
    "DeleteRangeTask",
    "FlushThresholds",
    "GCResult",
    "GCTooEarlyError",
    "KeyAssertion",
    "KeyExistsError",
    "KeyIsLockedError",
    "LockInfo",
    "LockResolver",
    "LockWaitTimeoutError",
    "PDError",
    "RegionError",
    "ResolveResult",
    "Snapshot",
    "SnapshotRuntimeStats",
    "TiKVError",
    "TimeoutError",
    "Transaction",
    "TransactionClient",
    "TransactionClosedError",
    "TransactionOptions",
    "TxnError",
    "TxnLockNotFoundError",
    "TxnNotFoundError",
    "TxnTooLargeError",
    "UndeterminedError",
    "ValueEntry",
    "WriteConflictError",
    "__version__",
]

__version__ = "0.1.0"
