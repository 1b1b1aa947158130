"""Unmodified third-party TiKV clients against the embedded cluster.

``tikv-client==0.0.4`` (a binding of client-rust) and ``tikv-python==0.1.1`` (pure Python,
raw only) each register kvproto's protobuf packages, so neither can share a process with
``tikv_proto``: each runs a scenario script under ``scenarios/`` in its own virtualenv, against
a ``MockCluster`` served from this process, and prints what it observed as JSON. The tests
compare those observations with a model of what TiKV would return and with what the mock
store holds afterwards.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from tikv_mockstore import MockCluster
from tikv_raw import RawClient

from ._ours_raw import run as run_ours_raw

pytestmark = pytest.mark.interop

HERE = Path(__file__).parent
SCENARIOS = HERE / "scenarios"
ROOT = HERE.parent.parent
FIRST_BYTES = (0x05, 0x25, 0x45, 0x65, 0x85, 0xA5, 0xC5, 0xE5)
PEERS = {"tikv-client": "tikv-client==0.0.4", "tikv-python": "tikv-python==0.1.1"}


def _uv() -> str:
    uv = os.environ.get("TIKV_INTEROP_UV") or shutil.which("uv")
    if uv is None:
        pytest.fail("interop tests need uv to build the peers' virtualenvs (pip install uv)")
    return uv


def _peer_python(name: str) -> Path:
    """A virtualenv with only the peer client installed, cached under .nox/interop-venvs."""
    venv = ROOT / ".nox" / "interop-venvs" / name
    python = venv / "bin" / "python"
    marker = venv / "installed.txt"
    if not (python.exists() and marker.exists() and marker.read_text() == PEERS[name]):
        shutil.rmtree(venv, ignore_errors=True)
        uv = _uv()
        subprocess.run([uv, "venv", "--quiet", "--python", sys.executable, str(venv)], check=True)
        subprocess.run(
            [uv, "pip", "install", "--quiet", "--python", str(python), PEERS[name]], check=True
        )
        marker.write_text(PEERS[name])
    return python


def _run(name: str, script: str, pd: str) -> dict[str, Any]:
    proc = subprocess.run(
        [str(_peer_python(name)), str(SCENARIOS / script), pd],
        capture_output=True,
        text=True,
        timeout=180,
        # The peer must not see our source tree (it would not matter, but keep it honest).
        env={k: v for k, v in os.environ.items() if k != "PYTHONPATH"},
        check=False,
    )
    assert proc.returncode == 0, f"{script} failed:\n{proc.stderr[-4000:]}"
    result: dict[str, Any] = json.loads(proc.stdout)
    return result


def _hex_pairs(pairs: Any) -> list[list[str]]:
    return [[k.hex(), v.hex()] for k, v in pairs]


def _crc64_xz(data: bytes) -> int:
    """CRC-64/XZ (ECMA-182 polynomial, reflected, all-ones init and final XOR), bit by bit.

    Written independently of the mock store so the checksum it serves is checked, not echoed.
    """
    crc = 0xFFFFFFFFFFFFFFFF
    for byte in data:
        crc ^= byte
        for _ in range(8):
            crc = (crc >> 1) ^ (0xC96C5795D7870F42 if crc & 1 else 0)
    return crc ^ 0xFFFFFFFFFFFFFFFF


def _checksum(pairs: dict[bytes, bytes]) -> list[int]:
    """TiKV's raw checksum: XOR over pairs of crc64(user key + user value), with counts.

    With TTL storage (V1TTL) TiKV reads through ``RawEncodeSnapshot``, which strips the
    stored expiry suffix, so expiry times never enter the checksum.
    """
    crc = 0
    for key, value in pairs.items():
        crc ^= _crc64_xz(key + value)
    return [crc, len(pairs), sum(len(k) + len(v) for k, v in pairs.items())]


def _spread_leaders(cluster: MockCluster) -> None:
    """Give each store the leadership of some regions, as PD's balancing would."""
    stores = [s.id for s in cluster.stores()]
    for i, region in enumerate(cluster.regions()):
        cluster.transfer_leader(region.id, stores[i % len(stores)])


@pytest.fixture
def cluster() -> Iterator[MockCluster]:
    with MockCluster(stores=3, regions=8) as c:
        _spread_leaders(c)
        yield c


def test_crc64_reference_value() -> None:
    # The published check value of CRC-64/XZ.
    assert _crc64_xz(b"123456789") == 0x995DC9BBDF1939FA


def test_cluster_spreads_regions_over_three_stores(cluster: MockCluster) -> None:
    leaders = {r.leader_store_id for r in cluster.regions()}
    assert len(cluster.regions()) == 8
    assert leaders == {s.id for s in cluster.stores()}


def test_tikv_client_raw(cluster: MockCluster) -> None:
    out = _run("tikv-client", "tikv_client_raw.py", cluster.pd_endpoints[0])
    keys = [bytes([b]) + b"interop-a" for b in FIRST_BYTES]
    model = {k: b"value-%d" % i for i, k in enumerate(keys)}
    assert out["get"] == [v.hex() for v in model.values()]
    assert out["get_missing"] is None
    batch = {bytes([b]) + b"interop-b": b"batch-%02x" % b for b in FIRST_BYTES}
    assert out["batch_get"] == sorted(_hex_pairs(batch.items()))
    model.update(batch)
    ordered = sorted(model.items())
    assert out["scan_all"] == _hex_pairs(ordered)
    assert out["scan_limited"] == _hex_pairs([kv for kv in ordered if kv[0] >= keys[1]][:3])
    assert out["scan_keys"] == [k.hex() for k, _ in ordered if k >= keys[2]]
    for key in (keys[0], keys[1], bytes([0x25]) + b"interop-b"):
        del model[key]
    assert out["after_delete"] == [None, None]
    model = {k: v for k, v in model.items() if not b"\x40" <= k < b"\xa0"}
    assert out["after_delete_range"] == _hex_pairs(sorted(model.items()))
    assert out["cf_write"] == b"in-write".hex()
    assert out["cf_default"] is None
    # What the store holds is what the client saw.
    held = cluster.raw.items("default", b"", None, cluster.clock.now_s())
    assert [(k, entry[0]) for k, entry in held] == sorted(model.items())
    assert cluster.raw.get("write", b"\x05cf-key", cluster.clock.now_s()) == b"in-write"
    # The writes really went to every store.
    assert all(cluster.counters.count("RawPut", store=s.id) > 0 for s in cluster.stores())


def test_tikv_client_transactions(cluster: MockCluster) -> None:
    out = _run("tikv-client", "tikv_client_txn.py", cluster.pd_endpoints[0])
    keys = [bytes([b]) + b"txn" for b in FIRST_BYTES]
    values = [b"v%d" % i for i in range(8)]
    assert out["snapshot_get"] == [v.hex() for v in values]
    assert out["snapshot_scan"] == _hex_pairs(zip(keys, values, strict=True))
    assert out["own_write"] == b"updated".hex()
    assert out["old_snapshot"] == [b"v0".hex(), b"v7".hex()]
    assert out["new_snapshot"] == [b"updated".hex(), None, b"new".hex()]
    assert out["conflict"] == "WriteConflict"
    assert out["after_conflict"] == b"from-t2".hex()
    assert out["for_update"] == b"v4".hex()
    assert out["after_pessimistic"] == [b"pessimistic".hex(), b"v5".hex()]
    assert out["batch_get_for_update"] == sorted(_hex_pairs([(keys[1], b"v1"), (keys[2], b"v2")]))
    # Multi-region two-phase commit really happened, and nothing is left locked.
    assert cluster.counters.count("Prewrite") >= 8
    assert cluster.counters.count("Commit") >= 2
    assert cluster.counters.count("PessimisticLock") >= 2
    assert cluster.counters.count("PessimisticRollback") >= 1
    ts = cluster.current_ts()
    assert cluster.engine.scan_lock(ts) == []


def test_tikv_python_raw(cluster: MockCluster) -> None:
    del cluster  # tikv-python's TTLs need a store with TTL support (storage API V1TTL)
    with MockCluster(stores=3, regions=8, api_version="V1TTL") as ttl_cluster:
        _spread_leaders(ttl_cluster)
        out = _run("tikv-python", "tikv_python_raw.py", ttl_cluster.pd_endpoints[0])
        entries = ttl_cluster.raw.items("default", b"", None, ttl_cluster.clock.now_s())
        held = {k: e[0] for k, e in entries}
        expiry = {k: e[1] for k, e in entries}
    keys = [bytes([b]) + b"py" for b in FIRST_BYTES]
    model = {k: b"value-%d" % i for i, k in enumerate(keys)}
    assert out["get"] == [v.hex() for v in model.values()]
    assert out["get_many"] == sorted(_hex_pairs((k, model[k]) for k in keys[:3]))
    model.update({bytes([b]) + b"pz": b"m" for b in FIRST_BYTES})
    ordered = sorted(model.items())
    assert out["scan_prefix"] == [k.hex() for k, _ in ordered if k.startswith(b"\x45")]
    assert out["scan_all"] == _hex_pairs(ordered)
    assert out["scan_reverse"] == [k.hex() for k, _ in reversed(ordered)]
    assert out["scan_reverse_bounded"] == [
        k.hex() for k, _ in reversed(ordered) if b"\x20" <= k < b"\x60"
    ]
    assert out["scan_limit"] == [k.hex() for k, _ in ordered[:3]]
    assert out["ttl"] == 60
    assert out["ttl_none"] is None
    model[b"\x05ttl-key"] = b"expiring"
    # The TTL key still lives (the store's clock did not move), with an expiry set by the store.
    assert expiry[b"\x05ttl-key"] is not None
    assert out["checksum"] == _checksum(model)
    assert out["checksum_prefix"] == _checksum({k: v for k, v in model.items() if k[0] == 0x85})
    assert out["after_delete"] == [None, None, None]
    for key in keys[:3]:
        del model[key]
    model = {k: v for k, v in model.items() if k[0] != 0xC5 and k < b"\xe0"}
    assert out["after_delete_range"] == [k.hex() for k in sorted(model)]
    assert out["cas"] == [[True, None], [False, b"one".hex()], [True, b"one".hex()]]
    assert out["cas_final"] == b"three".hex()
    model[b"\x05cas"] = b"three"
    assert held == model


def test_same_raw_scenario_gives_identical_results_through_both_clients() -> None:
    """tikv-python and this project's RawClient, one after the other on one cluster."""
    with MockCluster(stores=3, regions=8, api_version="V1TTL") as ttl_cluster:
        _spread_leaders(ttl_cluster)
        pd = ttl_cluster.pd_endpoints[0]
        theirs = _run("tikv-python", "tikv_python_raw.py", pd)
        with RawClient.connect([pd]) as wipe:
            wipe.delete_range(b"", None)
        ours = run_ours_raw(pd)
    assert ours == theirs
