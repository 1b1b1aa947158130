r"""The ``tikv-mockstore`` command: run an embedded cluster until interrupted.

``tikv-mockstore serve --pd-port 2379 --stores 3`` prints ``PD listening on 127.0.0.1:2379`` on
standard output once every server accepts connections, then serves until SIGINT or SIGTERM.
Split keys accept Python byte escapes (``--split-raw 'k\\x00'``).
"""

from __future__ import annotations

import argparse
import codecs
import signal
import sys
import threading
from collections.abc import Sequence
from types import FrameType

from tikv_mockstore.server import MockCluster

__all__ = ["main", "parse_key"]


def parse_key(text: str) -> bytes:
    r"""Turn a command-line key with Python escapes (``a\\x00b``) into bytes."""
    try:
        raw, _ = codecs.escape_decode(text.encode("utf-8"))
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"invalid key {text!r}: {exc}") from None
    return bytes(raw)


def _api_version(text: str) -> str:
    value = text.upper()
    if value in ("1", "V1"):
        return "V1"
    if value in ("2", "V2"):
        return "V2"
    if value == "V1TTL":
        return "V1TTL"
    raise argparse.ArgumentTypeError(f"--api-version must be 1, V1TTL or 2, got {text!r}")


def _port(text: str) -> int:
    try:
        port = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"invalid port {text!r}") from None
    if not 0 <= port < 65536:
        raise argparse.ArgumentTypeError(f"port must be in [0, 65535], got {port}")
    return port


def _positive(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"invalid number {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {value}")
    return value


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of ``tikv-mockstore``."""
    parser = argparse.ArgumentParser(
        prog="tikv-mockstore", description="An embedded TiKV-compatible cluster over gRPC."
    )
    sub = parser.add_subparsers(dest="command", required=True)
    serve = sub.add_parser("serve", help="run a cluster until SIGINT / SIGTERM")
    serve.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1)")
    serve.add_argument("--pd-port", type=_port, default=2379, help="PD port (0: pick a free one)")
    serve.add_argument("--stores", type=_positive, default=3, help="number of TiKV stores")
    serve.add_argument("--pd-members", type=_positive, default=1, help="number of PD members")
    serve.add_argument(
        "--split-raw",
        type=parse_key,
        nargs="+",
        action="extend",
        default=[],
        metavar="KEY",
        help="raw split keys (repeatable)",
    )
    serve.add_argument(
        "--split-txn",
        type=parse_key,
        nargs="+",
        action="extend",
        default=[],
        metavar="KEY",
        help="transactional split keys (memcomparable-encoded for region boundaries)",
    )
    serve.add_argument(
        "--regions", type=_positive, default=None, help="pre-split into N regions by first byte"
    )
    serve.add_argument(
        "--api-version", type=_api_version, default="V1", help="storage API version: 1, V1TTL, 2"
    )
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; returns the exit status."""
    args = build_parser().parse_args(argv)
    if args.regions is not None and args.regions > 256:
        print("tikv-mockstore: --regions must be at most 256", file=sys.stderr)
        return 2
    stop = threading.Event()

    def on_signal(signum: int, frame: FrameType | None) -> None:
        stop.set()

    previous = {s: signal.signal(s, on_signal) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        with MockCluster(
            stores=args.stores,
            regions=args.regions,
            split_raw=args.split_raw,
            split_txn=args.split_txn,
            pd_members=args.pd_members,
            pd_port=args.pd_port,
            api_version=args.api_version,
            host=args.host,
        ) as cluster:
            print(f"PD listening on {cluster.pd_endpoints[0]}", flush=True)
            for sid, address in sorted(cluster.store_addresses.items()):
                print(f"store {sid} listening on {address}", file=sys.stderr, flush=True)
            while not stop.wait(0.5):
                pass
    except OSError as exc:
        print(f"tikv-mockstore: {exc}", file=sys.stderr)
        return 1
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)
    return 0


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
