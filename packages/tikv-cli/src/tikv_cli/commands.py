"""The raw and transactional key-value commands, shared by one-shot use and the shell.

Each command is described once, as an argparse sub-parser (:func:`add_kv_commands`), and
executed by :func:`run_raw` or :func:`run_txn` on an open client. Output goes to ``out``
as plain lines, so it pipes well: a value on its own line, scans as ``key<TAB>value``.
The return value is the exit status (see :data:`EXIT_OK` and friends).
"""

from __future__ import annotations

import argparse
import datetime
from collections.abc import Callable
from typing import Any, NoReturn, TextIO, TypeVar

from tikv_raw import RawClient
from tikv_txn import LOCK_NO_WAIT, Transaction, TransactionClient

from tikv_cli._format import UsageError, parse_bytes, show_bytes

__all__ = [
    "EXIT_FAILED",
    "EXIT_NOT_FOUND",
    "EXIT_OK",
    "EXIT_USAGE",
    "RAW_COMMANDS",
    "TXN_CLIENT_COMMANDS",
    "TXN_COMMANDS",
    "TXN_SHELL_COMMANDS",
    "ArgParser",
    "add_kv_commands",
    "check_kv_args",
    "run_raw",
    "run_txn",
    "run_txn_client",
    "run_txn_once",
    "runs_on_client",
]

#: The command did what was asked.
EXIT_OK = 0
#: A read found nothing (``get`` / ``ttl`` of a missing key) or a CAS did not swap.
EXIT_NOT_FOUND = 1
#: Bad command-line input: the message says what was wrong.
EXIT_USAGE = 2
#: The cluster could not be reached, or refused or failed the operation.
EXIT_FAILED = 3

#: The sub-commands of ``tikv raw``.
RAW_COMMANDS = ("get", "put", "delete", "scan", "delete-range", "ttl", "checksum", "cas")
#: The sub-commands of ``tikv txn``.
TXN_COMMANDS = ("get", "put", "delete", "scan", "delete-range", "gc")
#: The transactional commands of the shell: those of ``tikv txn`` and the locking reads,
#: which only make sense inside an open transaction (``begin`` … ``commit``).
TXN_SHELL_COMMANDS = (*TXN_COMMANDS, "get-for-update", "lock")
#: Transactional commands that run on the client, outside any transaction.
TXN_CLIENT_COMMANDS = ("delete-range", "gc")


_N = TypeVar("_N", int, float)


class ArgParser(argparse.ArgumentParser):
    """An argument parser that raises :class:`UsageError` instead of exiting when told to.

    The shell parses each line with it (an error must not end the session); the ``tikv``
    command lets it exit with status 2 as argparse does.
    """

    raise_errors = False

    def error(self, message: str) -> NoReturn:
        """Report a usage error: raise (shell) or print usage and exit 2."""
        if self.raise_errors:
            raise UsageError(message)
        super().error(message)

    def exit(self, status: int = 0, message: str | None = None) -> NoReturn:
        """Exit (``--help``); in the shell, print the message and raise instead."""
        if self.raise_errors:
            if message:
                self._print_message(message)
            raise _HelpShownError
        super().exit(status, message)


class _HelpShownError(Exception):
    """``--help`` was handled inside the shell (not an error)."""


def _number_argument(
    parse: Callable[[str], _N],
    *,
    invalid: str,
    valid: Callable[[_N], bool],
    out_of_range: str,
) -> Callable[[str], _N]:
    """An argparse ``type`` that parses a number and checks its range.

    ``invalid`` and ``out_of_range`` are messages with ``{text}`` / ``{value}`` fields.
    """

    def convert(text: str) -> _N:
        try:
            value = parse(text)
        except ValueError:
            raise argparse.ArgumentTypeError(invalid.format(text=text)) from None
        if not valid(value):
            raise argparse.ArgumentTypeError(out_of_range.format(text=text, value=value))
        return value

    return convert


_positive_int = _number_argument(
    int,
    invalid="invalid integer {text!r}",
    valid=lambda value: value >= 1,
    out_of_range="must be at least 1, got {value}",
)
_ttl = _number_argument(
    int,
    invalid="invalid TTL {text!r} (whole seconds)",
    valid=lambda value: value >= 1,
    out_of_range="TTL must be at least 1 second, got {value}",
)
_stale = _number_argument(
    float,
    invalid="invalid number of seconds {text!r}",
    valid=lambda value: 0 < value < 1e9,
    out_of_range="staleness must be positive seconds, got {text!r}",
)
_timestamp = _number_argument(
    int,
    invalid="invalid timestamp {text!r} (a TSO integer)",
    valid=lambda value: 0 < value < 1 << 63,
    out_of_range="timestamp must be in [1, 2**63), got {value}",
)


def add_kv_commands(
    sub: Any,
    names: tuple[str, ...],
    *,
    parents: list[argparse.ArgumentParser],
    kind: str = "raw",
) -> None:
    """Add the key-value sub-commands ``names`` to the sub-parser collection ``sub``.

    ``kind`` is ``"raw"`` or ``"txn"``: the two share the names of the common commands,
    and each adds the options only it has (raw: TTLs, reverse and key-only scans; txn:
    stale reads).
    """
    raw = kind == "raw"
    if "get" in names:
        p = sub.add_parser("get", parents=parents, help="print the value of KEY")
        p.add_argument("key", metavar="KEY")
        if not raw:
            _add_stale(p)
    if "get-for-update" in names:
        p = sub.add_parser(
            "get-for-update",
            parents=parents,
            help="print the value of KEY and lock it (pessimistic: now; optimistic: at commit)",
        )
        p.add_argument("key", metavar="KEY")
        _add_no_wait(p)
    if "lock" in names:
        p = sub.add_parser(
            "lock",
            parents=parents,
            help="lock KEYs without reading them (pessimistic: now; optimistic: at commit)",
        )
        p.add_argument("keys", metavar="KEY", nargs="+")
        _add_no_wait(p)
    if "put" in names:
        p = sub.add_parser("put", parents=parents, help="set KEY to VALUE")
        p.add_argument("key", metavar="KEY")
        p.add_argument("value", metavar="VALUE")
        if raw:
            p.add_argument("--ttl", type=_ttl, help="expire after this many seconds")
    if "delete" in names:
        p = sub.add_parser("delete", parents=parents, help="delete KEY")
        p.add_argument("key", metavar="KEY")
    if "scan" in names:
        p = sub.add_parser("scan", parents=parents, help="list pairs of [START, END)")
        p.add_argument("start", metavar="START", nargs="?", default="", help="default: first")
        p.add_argument("end", metavar="END", nargs="?", default=None, help="default: no end")
        p.add_argument(
            "--limit", type=_positive_int, default=100, help="at most N pairs (default 100)"
        )
        p.add_argument("--reverse", action="store_true", help="from END down to START")
        p.add_argument("--keys-only", action="store_true", help="print keys only")
        if not raw:
            _add_stale(p)
    if "delete-range" in names:
        p = sub.add_parser(
            "delete-range",
            parents=parents,
            help="delete every key in [START, END)"
            + ("" if raw else ": every version and lock, outside transactions (no undo)"),
        )
        p.add_argument("start", metavar="START")
        p.add_argument("end", metavar="END", nargs="?", default=None, help="default: no end")
    if "gc" in names:
        p = sub.add_parser(
            "gc",
            parents=parents,
            help="resolve locks below SAFEPOINT, then advance PD's GC safepoint to it",
        )
        p.add_argument(
            "safe_point",
            metavar="SAFEPOINT",
            type=_timestamp,
            help="a TSO timestamp (e.g. a commit ts); versions older than it may be collected",
        )
    if "ttl" in names:
        p = sub.add_parser("ttl", parents=parents, help="print the seconds left of KEY's TTL")
        p.add_argument("key", metavar="KEY")
    if "checksum" in names:
        p = sub.add_parser(
            "checksum", parents=parents, help="CRC64-XOR checksum, count and bytes of a range"
        )
        p.add_argument("start", metavar="START", nargs="?", default="")
        p.add_argument("end", metavar="END", nargs="?", default=None)
    if "cas" in names:
        p = sub.add_parser(
            "cas",
            parents=parents,
            help="compare-and-swap: set KEY to NEW if it holds EXPECTED (atomic mode)",
        )
        p.add_argument("key", metavar="KEY")
        p.add_argument("new", metavar="NEW")
        group = p.add_mutually_exclusive_group(required=True)
        group.add_argument("--expected", metavar="VALUE", help="the value KEY must hold")
        group.add_argument(
            "--expect-absent", action="store_true", help="swap only if KEY does not exist"
        )


def _add_stale(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--stale",
        type=_stale,
        metavar="SECONDS",
        help="stale read: the data as of about SECONDS ago, from any replica that has it",
    )


def _add_no_wait(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--no-wait",
        action="store_true",
        help="fail at once if another transaction holds the lock (default: wait)",
    )


_BYTE_ARGS = {
    "key": "key",
    "value": "value",
    "start": "start",
    "end": "end",
    "new": "new value",
    "expected": "expected value",
}


def check_kv_args(args: argparse.Namespace) -> None:
    """Parse every key / value argument of ``args`` once, before connecting to anything.

    Raises:
        UsageError: A key or value is not valid hex (``--hex``) or not encodable.

    """
    for name, what in _BYTE_ARGS.items():
        text = getattr(args, name, None)
        if isinstance(text, str):
            parse_bytes(text, hex_input=args.hex, what=what)
    for text in getattr(args, "keys", None) or ():
        parse_bytes(text, hex_input=args.hex, what="key")


def _key(args: argparse.Namespace, name: str = "key") -> bytes:
    text: str = getattr(args, name)
    return parse_bytes(text, hex_input=args.hex, what=name.replace("_", " "))


def _opt_key(args: argparse.Namespace, name: str) -> bytes | None:
    text: str | None = getattr(args, name)
    if text is None:
        return None
    return parse_bytes(text, hex_input=args.hex, what=name)


def _printer(args: argparse.Namespace, out: TextIO) -> Callable[[bytes], str]:
    hex_output: bool = args.hex

    def show(data: bytes) -> str:
        return show_bytes(data, hex_output=hex_output)

    return show


def _print_pairs(
    pairs: Any, args: argparse.Namespace, out: TextIO, *, keys_only: bool = False
) -> int:
    show = _printer(args, out)
    count = 0
    for key, value in pairs:
        count += 1
        if keys_only:
            print(show(key), file=out)
        else:
            print(f"{show(key)}\t{show(value)}", file=out)
    return count


def run_raw(client: RawClient, args: argparse.Namespace, out: TextIO, err: TextIO) -> int:
    """Execute the raw command in ``args`` on ``client``; returns the exit status."""
    show = _printer(args, out)
    cmd: str = args.op
    if cmd == "get":
        value = client.get(_key(args))
        if value is None:
            print("(not found)", file=err)
            return EXIT_NOT_FOUND
        print(show(value), file=out)
    elif cmd == "put":
        key = _key(args)
        value = parse_bytes(args.value, hex_input=args.hex, what="value")
        client.put(key, value, ttl=args.ttl)
        print("OK", file=out)
    elif cmd == "delete":
        client.delete(_key(args))
        print("OK", file=out)
    elif cmd == "scan":
        start = _key(args, "start")
        end = _opt_key(args, "end")
        if end is not None and not args.reverse and end <= start and end != b"":
            raise UsageError("scan: END must be greater than START")
        if args.reverse:
            # START..END is always given low..high; a reverse scan walks it downwards.
            pairs = client.scan(start, end, limit=args.limit, reverse=True, key_only=args.keys_only)
        else:
            pairs = client.scan(start, end, limit=args.limit, key_only=args.keys_only)
        _print_pairs(pairs, args, out, keys_only=args.keys_only)
    elif cmd == "delete-range":
        start = _key(args, "start")
        end = _opt_key(args, "end")
        if end is not None and end <= start:
            raise UsageError("delete-range: END must be greater than START")
        client.delete_range(start, end)
        print("OK", file=out)
    elif cmd == "ttl":
        key = _key(args)
        ttl = client.get_key_ttl(key)
        if ttl is None:
            print("(not found)", file=err)
            return EXIT_NOT_FOUND
        print(f"{ttl}" if ttl else "0 (no TTL)", file=out)
    elif cmd == "checksum":
        start = _key(args, "start")
        end = _opt_key(args, "end")
        checksum = client.checksum(start, end)
        print(f"crc64_xor\t{checksum.crc64_xor}", file=out)
        print(f"total_kvs\t{checksum.total_kvs}", file=out)
        print(f"total_bytes\t{checksum.total_bytes}", file=out)
    elif cmd == "cas":
        key = _key(args)
        new = parse_bytes(args.new, hex_input=args.hex, what="new value")
        expected = (
            None
            if args.expect_absent
            else parse_bytes(args.expected, hex_input=args.hex, what="expected value")
        )
        previous, swapped = client.compare_and_swap(key, expected, new)
        before = "(absent)" if previous is None else show(previous)
        print(f"{'swapped' if swapped else 'not swapped'}; previous value: {before}", file=out)
        return EXIT_OK if swapped else EXIT_NOT_FOUND
    else:  # pragma: no cover - the parser only produces the names above
        raise UsageError(f"unknown raw command {cmd!r}")
    return EXIT_OK


def runs_on_client(args: argparse.Namespace) -> bool:
    """Whether the txn command in ``args`` runs on the client, outside any transaction.

    GC, delete-range and stale reads (``--stale``) do; the others run in a transaction.
    """
    return args.op in TXN_CLIENT_COMMANDS or getattr(args, "stale", None) is not None


def _scan_range(args: argparse.Namespace) -> tuple[bytes, bytes | None]:
    start = _key(args, "start")
    end = _opt_key(args, "end")
    if end is not None and end <= start and end != b"":
        raise UsageError("scan: END must be greater than START")
    return start, end


def run_txn(txn: Transaction, args: argparse.Namespace, out: TextIO, err: TextIO) -> int:
    """Execute the transactional command in ``args`` inside ``txn``; returns the exit status.

    The caller commits (one-shot commands) or leaves the transaction open (the shell).
    Commands for which :func:`runs_on_client` is true go to :func:`run_txn_client`.
    """
    show = _printer(args, out)
    cmd: str = args.op
    if runs_on_client(args):
        raise UsageError(f"txn {cmd}: runs outside a transaction (use run_txn_client)")
    if cmd in ("get", "get-for-update"):
        key = _key(args)
        if cmd == "get":
            value = txn.get(key)
        else:
            value = txn.get_for_update(key, lock_wait_timeout_ms=_lock_wait(args))
        if value is None:
            print("(not found)", file=err)
            return EXIT_NOT_FOUND
        print(show(value), file=out)
    elif cmd == "lock":
        keys = [parse_bytes(text, hex_input=args.hex, what="key") for text in args.keys]
        txn.lock_keys(keys, lock_wait_timeout_ms=_lock_wait(args))
        print(f"LOCKED {len(keys)} key{'s' if len(keys) != 1 else ''}", file=out)
    elif cmd == "put":
        txn.put(_key(args), parse_bytes(args.value, hex_input=args.hex, what="value"))
    elif cmd == "delete":
        txn.delete(_key(args))
    elif cmd == "scan":
        start, end = _scan_range(args)
        pairs = txn.scan(
            start, end, limit=args.limit, reverse=args.reverse, key_only=args.keys_only
        )
        _print_pairs(pairs, args, out, keys_only=args.keys_only)
    else:  # pragma: no cover - the parser only produces the names above
        raise UsageError(f"unknown txn command {cmd!r}")
    return EXIT_OK


def run_txn_once(
    client: TransactionClient, args: argparse.Namespace, out: TextIO, err: TextIO
) -> int:
    """Execute the txn command in ``args`` on its own: in a transaction committed at once.

    Commands that run on the client (:func:`runs_on_client`) go to :func:`run_txn_client`.
    A write prints ``OK (committed at TS)``; a failed command rolls its transaction back.
    """
    if runs_on_client(args):
        return run_txn_client(client, args, out, err)
    txn = client.begin()
    try:
        status = run_txn(txn, args, out, err)
    except BaseException:
        txn.rollback()
        raise
    commit_ts = txn.commit()
    if args.op in ("put", "delete"):
        print(f"OK (committed at {commit_ts})", file=out)
    return status


def _lock_wait(args: argparse.Namespace) -> int | None:
    """The lock wait of a locking command: no wait with ``--no-wait``, else the default."""
    return LOCK_NO_WAIT if args.no_wait else None


def run_txn_client(
    client: TransactionClient, args: argparse.Namespace, out: TextIO, err: TextIO
) -> int:
    """Execute a txn command that runs on ``client`` itself (see :func:`runs_on_client`).

    ``gc`` resolves the locks below the safepoint and advances PD's GC safepoint (a
    service safepoint may hold it back: then it says so on ``err``); ``delete-range``
    deletes every version of every key of the range; ``get`` / ``scan`` with ``--stale``
    read a stale snapshot.
    """
    show = _printer(args, out)
    cmd: str = args.op
    if cmd == "gc":
        asked: int = args.safe_point
        now = client.current_timestamp()
        if asked > now:
            raise UsageError(
                f"gc: SAFEPOINT {asked} is in the future (PD's current timestamp is {now})"
            )
        safe_point = client.gc(asked)
        print(f"GC safepoint: {safe_point} ({_ts_time(safe_point)})", file=out)
        if safe_point < asked:
            print(
                f"note: the safepoint stays below {asked}: a service safepoint holds it back",
                file=err,
            )
    elif cmd == "delete-range":
        start = _key(args, "start")
        end = _opt_key(args, "end")
        if end is not None and end <= start:
            raise UsageError("delete-range: END must be greater than START")
        regions = client.delete_range(start, end)
        print(f"OK ({regions} region{'s' if regions != 1 else ''})", file=out)
    elif cmd in ("get", "scan") and args.stale is not None:
        snapshot = client.stale_snapshot(args.stale)
        if cmd == "get":
            value = snapshot.get(_key(args))
            if value is None:
                print(f"(not found at ts {snapshot.ts})", file=err)
                return EXIT_NOT_FOUND
            print(show(value), file=out)
        else:
            start, end = _scan_range(args)
            pairs = snapshot.scan(
                start, end, limit=args.limit, reverse=args.reverse, key_only=args.keys_only
            )
            _print_pairs(pairs, args, out, keys_only=args.keys_only)
    else:  # pragma: no cover - runs_on_client selects the commands above
        raise UsageError(f"txn {cmd} runs inside a transaction")
    return EXIT_OK


def _ts_time(ts: int) -> str:
    """The wall-clock time of a TSO timestamp (its physical part: milliseconds, UTC)."""
    physical_ms = ts >> 18
    when = datetime.datetime.fromtimestamp(physical_ms / 1000, datetime.UTC)
    return when.strftime("%Y-%m-%d %H:%M:%S.%f")[:-3] + " UTC"
