"""The ``tikv`` command: demo, one-shot raw / txn commands, shell, embedded cluster, benchmarks.

Exit status: 0 done; 1 nothing found (``get`` / ``ttl`` of a missing key, a CAS that did not
swap); 2 bad command-line input; 3 the cluster could not be reached or refused / failed the
operation; 130 interrupted.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from typing import TextIO

from tikv_cli import __version__
from tikv_cli._format import UsageError, parse_endpoints
from tikv_cli.commands import (
    EXIT_FAILED,
    EXIT_USAGE,
    RAW_COMMANDS,
    TXN_COMMANDS,
    ArgParser,
    add_kv_commands,
)

__all__ = ["build_parser", "main"]

_EPILOG = """\
exit status: 0 done; 1 not found (get / ttl of a missing key, CAS not swapped);
2 bad input; 3 cluster unreachable or the operation failed; 130 interrupted.
"""


def _api_version(text: str) -> int:
    if text in ("1", "v1", "V1"):
        return 1
    if text in ("2", "v2", "V2"):
        return 2
    raise argparse.ArgumentTypeError(f"must be 1 or 2, got {text!r}")


def _seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"invalid number of seconds {text!r}") from None
    if not value > 0:
        raise argparse.ArgumentTypeError(f"must be positive, got {text!r}")
    return value


def _connection_options(*, pd_required_hint: bool) -> ArgParser:
    parent = ArgParser(add_help=False)
    parent.add_argument(
        "--pd",
        metavar="HOST:PORT[,...]",
        help="PD endpoints of the cluster"
        + (" (required for one-shot commands)" if pd_required_hint else ""),
    )
    parent.add_argument(
        "--api-version",
        type=_api_version,
        default=1,
        help="TiKV API version the cluster runs: 1 (default) or 2",
    )
    parent.add_argument(
        "--timeout", type=_seconds, default=5.0, help="seconds allowed to reach PD (default 5)"
    )
    return parent


def _key_options() -> ArgParser:
    parent = ArgParser(add_help=False)
    parent.add_argument(
        "--hex", action="store_true", help="keys and values are given and printed as hex"
    )
    return parent


def build_parser() -> ArgParser:
    """The ``tikv`` argument parser."""
    parser = ArgParser(
        prog="tikv",
        description="TiKV for Python: a demo, one-shot commands, a shell, an embedded cluster "
        "and benchmarks.",
        epilog=_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"tikv-cli {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    conn = _connection_options(pd_required_hint=True)
    keys = _key_options()

    demo = sub.add_parser(
        "demo",
        help="a short tour of raw and transactional operations (embedded cluster by default)",
        parents=[_connection_options(pd_required_hint=False)],
    )
    demo.set_defaults(command="demo")

    raw = sub.add_parser("raw", help="one raw key-value command against --pd")
    raw_sub = raw.add_subparsers(dest="op", required=True, metavar="OP")
    add_kv_commands(raw_sub, RAW_COMMANDS, parents=[conn, keys], kind="raw")

    txn = sub.add_parser(
        "txn",
        help="one transactional command: get / put / delete / scan in a transaction of its "
        "own; stale reads, delete-range and gc on the client",
    )
    txn_sub = txn.add_subparsers(dest="op", required=True, metavar="OP")
    add_kv_commands(txn_sub, TXN_COMMANDS, parents=[conn, keys], kind="txn")

    sub.add_parser(
        "shell",
        help="interactive shell: raw and transactional commands, begin / commit / rollback",
        parents=[conn, keys],
    )

    cluster = sub.add_parser("cluster", help="run the embedded cluster")
    cluster_sub = cluster.add_subparsers(dest="op", required=True, metavar="OP")
    start = cluster_sub.add_parser(
        "start", help="run an embedded PD + TiKV cluster in the foreground until Ctrl-C"
    )
    start.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1)")
    start.add_argument(
        "--pd-port", type=int, default=2379, help="PD port (default 2379; 0 picks a free one)"
    )
    start.add_argument("--stores", type=int, default=3, help="number of TiKV stores (default 3)")
    start.add_argument(
        "--regions", type=int, default=None, help="pre-split into N regions by the first key byte"
    )
    start.add_argument(
        "--api-version",
        default="V1",
        help="storage API version: 1 (default), V1TTL (raw with TTL) or 2",
    )

    from tikv_cli.bench.cli import add_bench_parser

    add_bench_parser(sub)
    return parser


def _endpoints(args: argparse.Namespace) -> list[str]:
    if not args.pd:
        raise UsageError(
            f"tikv {args.command}: --pd HOST:PORT is required "
            "(start a cluster with `tikv cluster start`, or try `tikv demo`)"
        )
    return parse_endpoints(args.pd)


def _run(args: argparse.Namespace, out: TextIO, err: TextIO) -> int:
    command: str = args.command
    if command == "demo":
        from tikv_cli.demo import run_demo

        endpoints = parse_endpoints(args.pd) if args.pd else None
        return run_demo(endpoints, api_version=args.api_version, timeout=args.timeout, out=out)
    if command == "raw":
        from tikv_cli._clients import connect_raw
        from tikv_cli.commands import check_kv_args, run_raw

        endpoints = _endpoints(args)
        check_kv_args(args)
        with connect_raw(
            endpoints,
            api_version=args.api_version,
            atomic=args.op == "cas",
            timeout=args.timeout,
        ) as client:
            return run_raw(client, args, out, err)
    if command == "txn":
        from tikv_cli._clients import connect_txn
        from tikv_cli.commands import check_kv_args, run_txn_once

        endpoints = _endpoints(args)
        check_kv_args(args)
        with connect_txn(endpoints, api_version=args.api_version, timeout=args.timeout) as tc:
            return run_txn_once(tc, args, out, err)
    if command == "shell":
        from tikv_cli.shell import run_shell

        return run_shell(
            _endpoints(args),
            api_version=args.api_version,
            timeout=args.timeout,
            hex_keys=args.hex,
        )
    if command == "cluster":
        from tikv_cli.cluster import start_cluster

        return start_cluster(
            host=args.host,
            pd_port=args.pd_port,
            stores=args.stores,
            regions=args.regions,
            api_version=args.api_version,
            err=err,
        )
    if command == "bench":
        from tikv_cli.bench.cli import run_bench_command

        return run_bench_command(args, out=out, err=err)
    raise UsageError(f"unknown command {command!r}")  # pragma: no cover


def main(argv: Sequence[str] | None = None) -> int:
    """Run the ``tikv`` command line; returns the exit status."""
    parser = build_parser()
    args = parser.parse_args(argv)
    out, err = sys.stdout, sys.stderr
    try:
        return _run(args, out, err)
    except UsageError as exc:
        print(f"tikv: error: {exc}", file=err)
        return EXIT_USAGE
    except KeyboardInterrupt:
        print("tikv: interrupted", file=err)
        return 130
    except Exception as exc:
        if isinstance(exc, ValueError | TypeError) and not _is_tikv_error(exc):
            # The clients check their arguments before sending anything: still bad input.
            print(f"tikv: error: {exc}", file=err)
            return EXIT_USAGE
        print(f"tikv: {_describe(exc)}", file=err)
        return EXIT_FAILED


def _is_tikv_error(exc: BaseException) -> bool:
    from tikv_pd.errors import TiKVError

    return isinstance(exc, TiKVError)


def _describe(exc: BaseException) -> str:
    from tikv_pd.errors import PDError, StoreUnavailableError, TiKVError

    if isinstance(exc, PDError):
        return f"cannot reach PD: {getattr(exc, 'message', exc)}"
    if isinstance(exc, StoreUnavailableError):
        return f"a TiKV store is unreachable: {exc}"
    if isinstance(exc, TiKVError):
        return f"{type(exc).__name__}: {exc}"
    return f"unexpected error: {type(exc).__name__}: {exc}"


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
