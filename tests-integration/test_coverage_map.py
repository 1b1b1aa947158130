"""Checks ``CLIENT_GO_COVERAGE.md``: the map from client-go test files to our tests.

(a) every client-go test file of the seed map has exactly one row (the seed's list is
    kept here too, so the check runs where ``../shared/seeds`` is absent, and is compared
    with the seed when it is present);
(b) every test the map names exists: the file is a test module pytest collects and it
    defines that test (read with ``ast``, no import, no collection run: fast and free of
    side effects); a slow variant asks ``pytest --collect-only`` itself;
(c) ``n/a`` only for pure Go harness files (``main_test.go``, files holding only
    ``TestMain``);
(d) a summary (rows per status) is printed (``pytest -s`` or
    ``python tests-integration/test_coverage_map.py``).

Renaming or removing a test that the map names makes (b) fail.
"""

from __future__ import annotations

import ast
import collections
import functools
import re
import subprocess
import sys
from pathlib import Path

import pytest

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
MAP = HERE / "CLIENT_GO_COVERAGE.md"
SEED = ROOT.parent / "shared" / "seeds" / "000_d6884b6c7446a4d0.txt"
STATUSES = ("covered", "partial", "open", "n/a")

#: The client-go test files of the seed map (paths under ``client-go/``).
SEED_FILES = (
    "config/config_test.go",
    "config/main_test.go",
    "config/retry/backoff_test.go",
    "config/retry/main_test.go",
    "config/security_test.go",
    "error/error_test.go",
    "integration_tests/1pc_test.go",
    "integration_tests/2pc_test.go",
    "integration_tests/assertion_test.go",
    "integration_tests/async_commit_fail_test.go",
    "integration_tests/async_commit_test.go",
    "integration_tests/client_fp_test.go",
    "integration_tests/delete_range_test.go",
    "integration_tests/gc_test.go",
    "integration_tests/health_feedback_test.go",
    "integration_tests/interceptor_test.go",
    "integration_tests/isolation_test.go",
    "integration_tests/lock_test.go",
    "integration_tests/main_test.go",
    "integration_tests/option_test.go",
    "integration_tests/pd_api_test.go",
    "integration_tests/pipelined_memdb_test.go",
    "integration_tests/prewrite_test.go",
    "integration_tests/range_task_test.go",
    "integration_tests/raw/api_mock_test.go",
    "integration_tests/raw/api_test.go",
    "integration_tests/raw/util_test.go",
    "integration_tests/resource_group_test.go",
    "integration_tests/resource_tag_test.go",
    "integration_tests/safepoint_test.go",
    "integration_tests/scan_mock_test.go",
    "integration_tests/scan_test.go",
    "integration_tests/snapshot_fail_test.go",
    "integration_tests/snapshot_test.go",
    "integration_tests/split_test.go",
    "integration_tests/store_test.go",
    "integration_tests/ticlient_test.go",
    "integration_tests/util_test.go",
    "internal/apicodec/codec_test.go",
    "internal/apicodec/codec_v1_test.go",
    "internal/apicodec/codec_v2_test.go",
    "internal/client/client_async_test.go",
    "internal/client/client_fail_test.go",
    "internal/client/client_interceptor_test.go",
    "internal/client/client_test.go",
    "internal/client/main_test.go",
    "internal/client/priority_queue_test.go",
    "internal/latch/latch_test.go",
    "internal/latch/main_test.go",
    "internal/latch/scheduler_test.go",
    "internal/locate/main_test.go",
    "internal/locate/metrics_collector_test.go",
    "internal/locate/region_cache_test.go",
    "internal/locate/region_request3_test.go",
    "internal/locate/region_request_state_test.go",
    "internal/locate/region_request_test.go",
    "internal/locate/replica_selector_test.go",
    "internal/mockstore/deadlock/deadlock_test.go",
    "internal/mockstore/deadlock/main_test.go",
    "internal/mockstore/mocktikv/main_test.go",
    "internal/mockstore/mocktikv/marshal_test.go",
    "internal/mockstore/mocktikv/mock_tikv_test.go",
    "internal/mockstore/mocktikv/mvcc_test.go",
    "internal/resourcecontrol/resource_control_test.go",
    "internal/unionstore/arena/arena_test.go",
    "internal/unionstore/art/art_iterator_test.go",
    "internal/unionstore/art/art_node_test.go",
    "internal/unionstore/art/art_snapshot_test.go",
    "internal/unionstore/art/art_test.go",
    "internal/unionstore/main_test.go",
    "internal/unionstore/memdb_bench_test.go",
    "internal/unionstore/memdb_norace_test.go",
    "internal/unionstore/memdb_test.go",
    "internal/unionstore/pipelined_memdb_test.go",
    "internal/unionstore/rbt/rbt_test.go",
    "internal/unionstore/union_store_test.go",
    "kv/key_test.go",
    "kv/kv_test.go",
    "kv/main_test.go",
    "oracle/oracles/export_test.go",
    "oracle/oracles/local_test.go",
    "oracle/oracles/main_test.go",
    "oracle/oracles/pd_test.go",
    "rawkv/rawkv_test.go",
    "tikv/kv_test.go",
    "tikv/main_test.go",
    "tikvrpc/interceptor/interceptor_test.go",
    "tikvrpc/interceptor/main_test.go",
    "tikvrpc/main_test.go",
    "tikvrpc/tikvrpc_test.go",
    "trace/flags_test.go",
    "trace/trace_test.go",
    "txnkv/transaction/2pc_test.go",
    "txnkv/transaction/batch_getter_test.go",
    "txnkv/txnlock/lock_resolver_test.go",
    "util/async/core_test.go",
    "util/async/runloop_test.go",
    "util/main_test.go",
    "util/misc_test.go",
    "util/rate_limit_test.go",
    "util/request_source_test.go",
)

#: Harness files that may be ``n/a``: every ``main_test.go``, and files that only hold
#: ``TestMain`` (and its flags).
ONLY_TESTMAIN = frozenset({"integration_tests/raw/util_test.go"})

_ROW = re.compile(
    r"^\| `client-go/(?P<file>[^`]+)` \| (?P<status>[^|]+?) \| (?P<tests>.*?) \| (?P<notes>.*) \|$"
)
_PACKAGE_TESTS = re.compile(r"packages/[^/]+/tests/")
_TEST_ID = re.compile(r"`([^`\s]+\.py(?:::[A-Za-z_][A-Za-z0-9_]*)+)`")


class Row(tuple[str, str, tuple[str, ...], str]):
    """``(file, status, test ids, notes)``."""

    @property
    def file(self) -> str:
        return self[0]

    @property
    def status(self) -> str:
        return self[1]

    @property
    def tests(self) -> tuple[str, ...]:
        return self[2]

    @property
    def notes(self) -> str:
        return self[3]


@functools.cache
def rows() -> tuple[Row, ...]:
    """The rows of the map, in file order."""
    found = []
    for line in MAP.read_text(encoding="utf-8").splitlines():
        if not line.startswith("| `client-go/"):
            continue
        m = _ROW.match(line)
        assert m is not None, f"malformed row: {line[:120]}"
        tests = tuple(_TEST_ID.findall(m["tests"]))
        found.append(Row((m["file"], m["status"].strip(), tests, m["notes"].strip())))
    return tuple(found)


def is_harness(file: str) -> bool:
    """Whether ``file`` is a pure Go test harness (the only rows allowed to be ``n/a``)."""
    return file.rsplit("/", 1)[-1] == "main_test.go" or file in ONLY_TESTMAIN


@functools.cache
def _tests_defined(path: Path) -> frozenset[str]:
    """Test ids (``name`` or ``Class::method``) pytest would collect from ``path``.

    Module-level ``test*`` functions; ``Test*`` classes' ``test*`` / ``runTest`` methods;
    ``TestX = Machine.TestCase`` assignments (hypothesis stateful tests: ``TestX::runTest``).
    """
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    names: set[str] = set()
    for node in tree.body:
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef) and node.name.startswith(
            "test"
        ):
            names.add(node.name)
        elif isinstance(node, ast.ClassDef) and node.name.startswith("Test"):
            for item in node.body:
                if isinstance(item, ast.FunctionDef | ast.AsyncFunctionDef) and (
                    item.name.startswith("test") or item.name == "runTest"
                ):
                    names.add(f"{node.name}::{item.name}")
        elif isinstance(node, ast.Assign):
            for target in node.targets:
                if isinstance(target, ast.Name) and target.id.startswith("Test"):
                    names.add(f"{target.id}::runTest")
    return frozenset(names)


def missing_test(test_id: str) -> str | None:
    """Why ``test_id`` does not name a collected test, or ``None`` if it does."""
    path_part, _, name = test_id.partition("::")
    path = ROOT / path_part
    if not (path_part.startswith("tests-integration/") or _PACKAGE_TESTS.match(path_part)):
        return f"{path_part} is not under packages/*/tests or tests-integration"
    if not path.name.startswith("test_") or path.suffix != ".py":
        return f"{path.name} is not a test module (test_*.py)"
    if not path.is_file():
        return f"{path_part} does not exist"
    if name not in _tests_defined(path):
        return f"{path_part} defines no test {name!r}"
    return None


def summary() -> dict[str, int]:
    """Rows per status."""
    counts = collections.Counter(row.status for row in rows())
    return {status: counts.get(status, 0) for status in STATUSES}


# -- the checks ---------------------------------------------------------------------------


def test_seed_list_matches_the_seed_document() -> None:
    if not SEED.is_file():
        pytest.skip(f"{SEED} is not available here; the embedded list is used")
    listed = re.findall(r"`client-go/([^`]+_test\.go)`", SEED.read_text(encoding="utf-8"))
    assert tuple(listed) == SEED_FILES


def test_every_seed_file_has_exactly_one_row() -> None:
    files = [row.file for row in rows()]
    duplicated = sorted(f for f, n in collections.Counter(files).items() if n > 1)
    assert not duplicated, f"files with several rows: {duplicated}"
    assert not set(SEED_FILES) - set(files), f"no row for {sorted(set(SEED_FILES) - set(files))}"
    assert not set(files) - set(SEED_FILES), (
        f"not in the seed: {sorted(set(files) - set(SEED_FILES))}"
    )
    assert len(files) == len(SEED_FILES) == 101


def test_statuses_are_known_and_justified() -> None:
    for row in rows():
        assert row.status in STATUSES, f"{row.file}: unknown status {row.status!r}"
        if row.status in ("covered", "partial"):
            assert row.tests, f"{row.file}: {row.status} but names no test"
        if row.status in ("partial", "open"):
            assert row.notes, f"{row.file}: {row.status} needs notes (what is missing / planned)"
        if row.status == "partial":
            assert (
                "Missing" in row.notes or "missing" in row.notes or "no counterpart" in row.notes
            ), f"{row.file}: partial rows say what is missing"


def test_na_only_for_go_harness_files() -> None:
    wrong = [row.file for row in rows() if row.status == "n/a" and not is_harness(row.file)]
    assert not wrong, f"n/a is only for Go harness files (main_test.go / TestMain): {wrong}"


def test_every_named_test_exists() -> None:
    problems = [
        f"{row.file}: {why}"
        for row in rows()
        for test_id in row.tests
        if (why := missing_test(test_id)) is not None
    ]
    assert not problems, "\n".join(problems)


def test_summary() -> None:
    counts = summary()
    print("\nclient-go coverage map:", ", ".join(f"{s}: {n}" for s, n in counts.items()))
    assert sum(counts.values()) == len(SEED_FILES)


@pytest.mark.slow
def test_named_tests_are_collected_by_pytest() -> None:
    """The authoritative form of (b): ask pytest itself (slow: collects every package)."""
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "pytest",
            "--collect-only",
            "-q",
            "-p",
            "no:cacheprovider",
            "packages",
            "tests-integration",
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    collected = {re.sub(r"\[.*$", "", line) for line in proc.stdout.splitlines() if "::" in line}
    absent = sorted({t for row in rows() for t in row.tests} - collected)
    assert not absent, f"named but not collected: {absent}"


def main() -> None:
    """Print the summary and any problem (``python tests-integration/test_coverage_map.py``)."""
    for row in rows():
        for test_id in row.tests:
            why = missing_test(test_id)
            if why is not None:
                print(f"MISSING {row.file}: {why}")
    counts = summary()
    print(f"{len(rows())} rows:", ", ".join(f"{s}: {n}" for s, n in counts.items()))


if __name__ == "__main__":
    main()
