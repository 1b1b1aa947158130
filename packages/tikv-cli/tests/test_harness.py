"""The comparison harness end to end with our client only (child processes, seconds)."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest
from tikv_cli.bench.harness import PEER_PACKAGES, default_venv_dir, main
from tikv_cli.bench.peer_runner import PEER_SUPPORT
from tikv_cli.bench.server import ServerProcess


def test_harness_runs_cells_in_processes_and_writes_reports(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "run"
    code = main(
        [
            "--workloads",
            "raw_get,tso",
            "--clients",
            "ours-async,ours-sync",
            "--concurrency",
            "2",
            "--duration",
            "0.3",
            "--warmup",
            "0.1",
            "--capacity-duration",
            "0.3",
            "--out",
            str(out),
        ]
    )
    printed = capsys.readouterr().out
    assert code == 0, printed
    doc = json.loads((out / "results.json").read_text())
    cells = {(r["workload"], r["client"]): r for r in doc["results"]}
    assert set(cells) == {
        ("raw_get", "ours-async"),
        ("raw_get", "ours-sync"),
        ("tso", "ours-async"),
        ("tso", "ours-sync"),
    }
    for cell in cells.values():
        assert cell["concurrency"] == 2
        assert cell["ops"] > 0 and cell["errors"] == 0, cell
        # Each cell ran in its own process against the server process: both CPUs known.
        assert cell["client_cpu_s"] > 0
        assert cell["server_cpu_s"] is not None
    modes = [c["mode"] for c in doc["capacity"]]
    assert modes == ["unary_get", "unary_put", "batch_get", "batch_put", "batch_txn"]
    assert all(c["requests_per_s"] > 0 and c["errors"] == 0 for c in doc["capacity"])
    report = (out / "results.md").read_text()
    assert "| raw_get | 2 | ours-async |" in report
    assert "## Mock capacity" in report
    assert report in printed


@pytest.mark.interop
@pytest.mark.parametrize("client", sorted(PEER_PACKAGES))
def test_peer_runner_in_its_virtualenv(client: str) -> None:
    python = default_venv_dir() / client / "bin" / "python"
    if not python.exists():
        pytest.skip(f"no {client} virtualenv at {python} (benchmarks/run.py creates it)")
    runner = Path(__file__).parents[1] / "src" / "tikv_cli" / "bench" / "peer_runner.py"
    with ServerProcess(stores=1, regions=2) as server:
        for workload in ("raw_get", "tso", "txn_pessimistic", "txn_small_1pc"):
            done = subprocess.run(
                [
                    *(str(python), str(runner), "--client", client, "--workload", workload),
                    *("--concurrency", "2", "--duration", "0.3", "--warmup", "0.1"),
                    *("--pd", server.endpoints[0], "--server-pid", str(server.pid), "--preload"),
                ],
                capture_output=True,
                text=True,
                timeout=120,
            )
            line = [x for x in done.stdout.splitlines() if x.startswith("RESULT ")]
            assert line, done.stderr
            result = json.loads(line[0].removeprefix("RESULT "))
            if workload in PEER_SUPPORT[client]:
                assert result["ops"] > 0 and result["errors"] == 0, result
            else:
                assert result == {"unsupported": f"{client} has no API for {workload}"}
