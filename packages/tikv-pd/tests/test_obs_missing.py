"""Without the ``metrics`` / ``tracing`` extras: everything imports and works, and the
enabling functions say what to install.

The extras are made unimportable (``sys.modules[name] = None`` in-process, an import
hook in a child interpreter), whether or not they are installed in this environment.
"""

from __future__ import annotations

import subprocess
import sys
import textwrap
from collections.abc import Iterator

import pytest
from tikv_pd import interceptor, metrics, observability, tracing
from tikv_raw import AsyncRawClient

BLOCKED = ("prometheus_client", "opentelemetry", "opentelemetry.trace")


@pytest.fixture
def extras_missing(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    for name in BLOCKED:
        monkeypatch.setitem(sys.modules, name, None)  # makes "import name" fail
    yield
    metrics.disable_metrics()
    tracing.disable_tracing()


def test_enable_metrics_says_how_to_install(extras_missing: None) -> None:
    with pytest.raises(metrics.MetricsNotInstalledError) as info:
        metrics.enable_metrics()
    assert isinstance(info.value, ImportError)
    assert 'pip install "tikv-pd[metrics]"' in str(info.value)
    assert metrics.get_metrics() is None
    assert interceptor.process_inner_chain is None


def test_enable_tracing_says_how_to_install(extras_missing: None) -> None:
    with pytest.raises(tracing.TracingNotInstalledError) as info:
        tracing.enable_tracing()
    assert isinstance(info.value, ImportError)
    assert 'pip install "tikv-pd[tracing]"' in str(info.value)
    assert tracing.get_tracing() is None
    assert interceptor.process_chain is None


def test_span_helper_is_a_no_op(extras_missing: None) -> None:
    with tracing.span("tikv.txn.prewrite", keys=1) as current:
        assert current is None


def test_nothing_is_instrumented_while_off() -> None:
    assert not observability.is_enabled()
    for name in ("get", "batch_get", "scan", "put"):
        method = AsyncRawClient.__dict__[name]
        assert not getattr(method, "__tikv_instrumented__", False)


CHILD = textwrap.dedent(
    """
    import asyncio, importlib.abc, sys

    BLOCKED = ("prometheus_client", "opentelemetry")

    class Block(importlib.abc.MetaPathFinder):
        def find_spec(self, name, path=None, target=None):
            if name.split(".")[0] in BLOCKED:
                raise ModuleNotFoundError(f"No module named {name!r} (blocked)", name=name)
            return None

    sys.meta_path.insert(0, Block())

    import tikv_pd, tikv_raw, tikv_txn, tikv_mockstore
    from tikv_pd import interceptor, logs, metrics, observability, request_context, tracing
    from tikv_mockstore import MockCluster
    from tikv_raw import AsyncRawClient, RawClient

    for enable, hint in ((metrics.enable_metrics, "metrics"), (tracing.enable_tracing, "tracing")):
        try:
            enable()
        except ImportError as exc:
            assert f'pip install "tikv-pd[{hint}]"' in str(exc), exc
        else:
            raise AssertionError(f"{enable.__name__} worked without the extra")

    async def main(cluster):
        async with await AsyncRawClient.connect(cluster.pd_endpoints) as client:
            await client.batch_put({b"a": b"1", b"z": b"2"})
            assert await client.batch_get([b"a", b"z"]) == {b"a": b"1", b"z": b"2"}
            client.set_request_context(request_context.RequestContext(
                resource_group_name="rg"))
            await client.put(b"k", b"v")
            ctx = cluster.counters.last_context("RawPut")
            assert ctx.resource_control_context.resource_group_name == "rg"

    with MockCluster(stores=2, split_raw=[b"m"]) as cluster:
        asyncio.run(main(cluster))
        with RawClient.connect(cluster.pd_endpoints) as sync_client:
            assert sync_client.get(b"k") == b"v"
    assert "prometheus_client" not in sys.modules
    assert not any(m.split(".")[0] == "opentelemetry" for m in sys.modules)
    assert observability.metrics is None and observability.tracing is None
    print("OK")
    """
)


def test_packages_import_and_work_without_the_extras() -> None:
    done = subprocess.run(
        [sys.executable, "-c", CHILD],
        capture_output=True,
        text=True,
        timeout=240,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.strip().endswith("OK")
