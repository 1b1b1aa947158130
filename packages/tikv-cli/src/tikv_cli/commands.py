"""The raw and transactional key-value commands, shared by one-shot use and the shell.

Each command is described once, as an argparse sub-parser (:func:`add_kv_commands`), and
executed by :func:`run_raw` or :func:`run_txn` on an open client. Output goes to ``out``
as plain lines, so it pipes well: a value on its own line, scans as ``key<TAB>value``.
The return value is the exit status (see :data:`EXIT_OK` and friends).
"""

from __future__ import annotations

import argparse
from collections.abc import Callable
from typing import Any, NoReturn, TextIO

from tikv_raw import RawClient

from tikv_cli._clients import TransactionLike
from tikv_cli._format import UsageError, parse_bytes, show_bytes

__all__ = [
    "EXIT_FAILED",
    "EXIT_NOT_FOUND",
    "EXIT_OK",
    "EXIT_USAGE",
    "RAW_COMMANDS",
    "TXN_COMMANDS",
    "ArgParser",
    "add_kv_commands",
    "check_kv_args",
    "run_raw",
    "run_txn",
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
TXN_COMMANDS = ("get", "put", "delete", "scan")


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


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"invalid integer {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def _ttl(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"invalid TTL {text!r} (whole seconds)") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"TTL must be at least 1 second, got {value}")
    return value


def add_kv_commands(
    sub: Any, names: tuple[str, ...], *, parents: list[argparse.ArgumentParser]
) -> None:
    """Add the key-value sub-commands ``names`` to the sub-parser collection ``sub``."""
    if "get" in names:
        p = sub.add_parser("get", parents=parents, help="print the value of KEY")
        p.add_argument("key", metavar="KEY")
    if "put" in names:
        p = sub.add_parser("put", parents=parents, help="set KEY to VALUE")
        p.add_argument("key", metavar="KEY")
        p.add_argument("value", metavar="VALUE")
        if "ttl" in names:
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
        if "ttl" in names:  # raw only
            p.add_argument("--reverse", action="store_true", help="from END down to START")
            p.add_argument("--keys-only", action="store_true", help="print keys only")
    if "delete-range" in names:
        p = sub.add_parser("delete-range", parents=parents, help="delete every key in [START, END)")
        p.add_argument("start", metavar="START")
        p.add_argument("end", metavar="END", nargs="?", default=None, help="default: no end")
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


def run_txn(txn: TransactionLike, args: argparse.Namespace, out: TextIO, err: TextIO) -> int:
    """Execute the transactional command in ``args`` inside ``txn``; returns the exit status.

    The caller commits (one-shot commands) or leaves the transaction open (the shell).
    """
    show = _printer(args, out)
    cmd: str = args.op
    if cmd == "get":
        value = txn.get(_key(args))
        if value is None:
            print("(not found)", file=err)
            return EXIT_NOT_FOUND
        print(show(value), file=out)
    elif cmd == "put":
        txn.put(_key(args), parse_bytes(args.value, hex_input=args.hex, what="value"))
    elif cmd == "delete":
        txn.delete(_key(args))
    elif cmd == "scan":
        start = _key(args, "start")
        end = _opt_key(args, "end")
        if end is not None and end <= start and end != b"":
            raise UsageError("scan: END must be greater than START")
        _print_pairs(txn.scan(start, end, limit=args.limit), args, out)
    else:  # pragma: no cover - the parser only produces the names above
        raise UsageError(f"unknown txn command {cmd!r}")
    return EXIT_OK
