"""The membuffer benchmark (benchmarks/membuffer.py) runs, checks itself, and reports.

client-go's memdb_bench_test.go pairs its benchmarks with sanity checks; ours verify every
workload's answer inside the benchmark, which these tests run small.
"""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path
from types import ModuleType

import pytest
from tikv_txn.membuffer import MemBuffer

SCRIPT = Path(__file__).resolve().parents[3] / "benchmarks" / "membuffer.py"


def load() -> ModuleType:
    spec = importlib.util.spec_from_file_location("bench_membuffer", SCRIPT)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_every_workload_runs_and_reports() -> None:
    bench = load()
    result = bench.run(2000, seed=7)
    workloads = result["workloads"]
    assert set(workloads) == {
        "put_seq",
        "put_random",
        "put_large_key",
        "get_seq",
        "get_random",
        "set_get_random",
        "set_get_long_key",
        "iterate",
        "iterate_staged",
        "iterate_reverse",
        "create",
    }
    for name, w in workloads.items():
        expected = {"set_get_random": 4000, "set_get_long_key": 400}.get(name, 2000)
        assert w["ops"] == expected, name
        assert w["ops_per_s"] > 0 and w["seconds"] > 0
    memory = result["memory"]
    assert memory["entries"] == 2000
    # The buffer's own accounting: 2000 x (16-byte key + 128-byte value).
    assert memory["buffer_size_accounting"] == 2000 * (16 + 128)
    assert memory["bytes_per_entry_including_values"] > 16 + 128


def test_a_wrong_answer_fails_the_benchmark(monkeypatch: pytest.MonkeyPatch) -> None:
    bench = load()
    real_get = MemBuffer.get

    def off_by_one(self: MemBuffer, key: bytes) -> object:
        value = real_get(self, key)
        return value[:-1] if isinstance(value, bytes) else value

    monkeypatch.setattr(MemBuffer, "get", off_by_one)
    with pytest.raises(bench.BenchmarkError, match="wrong value read"):
        bench.bench_get(bench._records(100, seed=None))


def test_command_line_json(capsys: pytest.CaptureFixture[str]) -> None:
    bench = load()
    assert bench.main(["--keys", "500", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["keys"] == 500 and out["workloads"]["iterate"]["ops"] == 500
    with pytest.raises(SystemExit):
        bench.main(["--keys", "0"])
