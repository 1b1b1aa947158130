"""Peak client memory of one large pipelined DML transaction (issue 8's memory goal).

``python benchmarks/pipelined_memory.py`` starts an embedded cluster in a child process,
then runs the client in another child process: it writes ``--keys`` keys (default
1,000,000) with ``--value-size``-byte values (default 100: about 100 MB of keys and
values) in one pipelined transaction with client-go's flush thresholds, commits it, and
checks that every key is readable. It reports the client process's peak RSS (``VmHWM``)
at three points: after connecting (the baseline), after the commit returned (the
transaction's peak), and after the read-back. The project's goal is a transaction peak
under 300 MB, whatever the transaction's size: flushed generations leave memory.

The cluster holds all the data, so it runs in its own process and is not measured.
Timings are printed for information only: they are noisy on shared machines.
``--json`` prints the result as one JSON object.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

_FIRST_BYTES = (b"\x10", b"\x50", b"\x90", b"\xd0")


def _rss_mib(field: str) -> float:
    """A memory figure of this process from /proc (``VmHWM``: peak RSS, ``VmRSS``: now)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 1024.0
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def _key(i: int) -> bytes:
    return _FIRST_BYTES[i % 4] + b"pdml/%010d" % i


def _value(i: int, size: int) -> bytes:
    stamp = b"%010d" % i
    return (stamp * (size // len(stamp) + 1))[:size]


def run_client(pd: str, keys: int, value_size: int) -> dict[str, Any]:
    """The measured side: one pipelined transaction through the blocking client."""
    from tikv_pd.config import TransactionOptions
    from tikv_txn import TransactionClient
    from tikv_txn.pipelined import AsyncPipelinedTransaction

    out: dict[str, Any] = {"keys": keys, "value_size": value_size}
    with TransactionClient.connect([pd]) as client:
        client.current_timestamp()
        out["baseline_rss_mib"] = round(_rss_mib("VmRSS"), 1)
        started = time.perf_counter()
        txn = client.begin(options=TransactionOptions(pipelined=True))
        for i in range(keys):
            txn.put(_key(i), _value(i, value_size))
        written = time.perf_counter()
        inner = txn.async_transaction
        assert isinstance(inner, AsyncPipelinedTransaction)
        generations_while_writing = inner.generation
        commit_ts = txn.commit()
        committed = time.perf_counter()
        out["txn_peak_rss_mib"] = round(_rss_mib("VmHWM"), 1)
        out["generations"] = inner.generation
        out["generations_while_writing"] = generations_while_writing
        out["flushed_mib"] = round(inner.flushed_size / 2**20, 1)
        out["write_s"] = round(written - started, 1)
        out["commit_s"] = round(committed - written, 1)
        out["commit_ts"] = commit_ts
        # Read everything back, in chunks, each through its own snapshot (a snapshot
        # caches what it read: one for all the keys would hold them all).
        read_ts = client.current_timestamp()
        found = 0
        chunk = 10_000
        for lo in range(0, keys, chunk):
            snap = client.snapshot(read_ts)
            wanted = [_key(i) for i in range(lo, min(keys, lo + chunk))]
            got = snap.batch_get(wanted)
            found += sum(1 for i, k in enumerate(wanted, lo) if got.get(k) == _value(i, value_size))
        out["readable"] = found
        out["read_s"] = round(time.perf_counter() - committed, 1)
        out["final_peak_rss_mib"] = round(_rss_mib("VmHWM"), 1)
    return out


def main(argv: list[str]) -> int:
    """Parse the arguments, start the cluster, run and report the client."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--keys", type=int, default=1_000_000)
    parser.add_argument("--value-size", type=int, default=100)
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    parser.add_argument("--client", metavar="PD", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.client:
        print(json.dumps(run_client(args.client, args.keys, args.value_size)))
        return 0

    from tikv_mockstore import MockCluster

    with MockCluster(stores=3, regions=4, process=True) as cluster:
        proc = subprocess.run(
            [
                sys.executable,
                __file__,
                "--client",
                cluster.pd_endpoints[0],
                "--keys",
                str(args.keys),
                "--value-size",
                str(args.value_size),
            ],
            capture_output=True,
            text=True,
            check=False,
        )
    if proc.returncode != 0:
        sys.stderr.write(proc.stderr)
        return proc.returncode
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    if args.json:
        print(json.dumps(result))
    else:
        for name, value in result.items():
            print(f"{name:28} {value}")
    ok = result["readable"] == args.keys
    if not ok:
        print(f"only {result['readable']} of {args.keys} keys readable", file=sys.stderr)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
