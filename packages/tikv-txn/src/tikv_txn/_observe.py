"""Observability of the two-phase committer: phase spans and commit metrics.

Installed on :class:`tikv_txn.committer.TwoPhaseCommitter` only while metrics or tracing
is enabled (:func:`tikv_pd.observability.register_wrappers`); otherwise the committer runs
its plain methods.

* Each phase — ``prewrite``, ``get_commit_ts``, ``commit_primary``,
  ``commit_secondaries``, ``cleanup`` — gets a span ``tikv.txn.<phase>`` (a child of the
  ``tikv.txn.commit`` span; its RPC spans are its children) and is observed in
  ``tikv_client_python_txn_commit_phase_seconds{phase}`` (client-go keeps these times in
  ``util.CommitDetails``).
* A finished commit counts in client-go's protocol counters
  (``commit_txn_counter`` / ``async_commit_txn_counter`` / ``one_pc_txn_counter`` with
  ``ok`` / ``err``, and ``fallback`` when a 1PC attempt fell back to 2PC), and a
  successful one in ``txn_write_kv_num`` / ``txn_write_size_bytes`` and
  ``txn_regions_num{type="2pc_prewrite"}``.
"""

from __future__ import annotations

import functools
import time
from collections.abc import Awaitable, Callable
from typing import Any

from tikv_pd import observability as _obs
from tikv_pd.errors import UndeterminedError
from tikv_pd.observability import register_wrappers

from tikv_txn.committer import TwoPhaseCommitter

__all__ = ["PHASES"]

#: Committer method → phase name.
PHASES = {
    "prewrite": "prewrite",
    "get_commit_ts": "get_commit_ts",
    "commit_primary": "commit_primary",
    "commit_batches": "commit_secondaries",
    "cleanup": "cleanup",
}


def _phase(phase: str) -> Callable[[Callable[..., Awaitable[Any]]], Callable[..., Awaitable[Any]]]:
    def factory(fn: Callable[..., Awaitable[Any]]) -> Callable[..., Awaitable[Any]]:
        span_name = f"tikv.txn.{phase}"

        @functools.wraps(fn)
        async def observed(*args: Any, **kwargs: Any) -> Any:
            tracing = _obs.tracing
            metrics = _obs.metrics
            start = time.perf_counter()
            try:
                if tracing is None:
                    return await fn(*args, **kwargs)
                with tracing.span(span_name):
                    return await fn(*args, **kwargs)
            finally:
                if metrics is not None:
                    metrics.observe_commit_phase(phase, time.perf_counter() - start)

        return observed

    return factory


def _protocol(committer: TwoPhaseCommitter) -> str:
    # The protocol still in use when the commit ended, as client-go's isOnePC() /
    # isAsyncCommit(): a failed 1PC attempt counts as a 1PC error, and a 1PC or async
    # commit TiKV refused (fell back) counts as 2PC.
    if committer.one_pc:
        return "1pc"
    if committer.async_commit:
        return "async_commit"
    return "2pc"


def _execute(fn: Callable[..., Awaitable[int]]) -> Callable[..., Awaitable[int]]:
    @functools.wraps(fn)
    async def observed(committer: TwoPhaseCommitter) -> int:
        try:
            commit_ts = await fn(committer)
        except BaseException as exc:
            metrics = _obs.metrics
            if metrics is not None and committer.plan is not None:
                protocol = _protocol(committer)
                # client-go 2pc.go execute: a 2PC commit whose outcome is undetermined
                # counts as ok (it may well have committed); 1PC / async commit as err.
                undetermined = isinstance(exc, UndeterminedError) and protocol == "2pc"
                metrics.count_commit(protocol, "ok" if undetermined else "err")
            raise
        metrics = _obs.metrics
        plan = committer.plan
        if metrics is None or plan is None or not commit_ts:
            return commit_ts
        if committer.protocol.one_pc and not committer.one_pc_commit_ts:
            metrics.count_commit("1pc", "fallback")
        metrics.count_commit(_protocol(committer), "ok")
        metrics.observe_txn_write(len(plan.mutations), plan.size)
        regions = {batch.region.id for batch in committer.batches}
        metrics.observe_txn_regions("2pc_prewrite", len(regions))
        return commit_ts

    return observed


register_wrappers(
    TwoPhaseCommitter,
    {
        **{method: _phase(phase) for method, phase in PHASES.items()},
        "execute": _execute,
    },
)
