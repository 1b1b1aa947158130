"""``tikv shell``: an interactive session with raw and transactional commands.

Lines are split like a POSIX shell (quotes group words). Commands::

    get KEY | put KEY VALUE | delete KEY | scan [START [END]] [--limit N]
        outside a transaction: raw commands; between begin and commit: the transaction's
    raw OP ...      always a raw command (get put delete scan delete-range ttl checksum cas)
    txn OP ...      a transactional command (get put delete scan): in the open
                    transaction, else in one of its own
    txn get KEY --stale SECONDS      a stale read (scan too), outside any transaction
    txn delete-range START [END]     delete every version of a range (no undo)
    txn gc SAFEPOINT                 resolve locks and advance the GC safepoint
    begin [--pessimistic]   start a transaction;  commit;  rollback
    get-for-update KEY [--no-wait]   in a transaction: read KEY and lock it
    lock KEY... [--no-wait]          in a transaction: lock KEYs
        (pessimistic: locked now, waiting for other holders; optimistic: checked at commit)
    help;  exit / quit (or Ctrl-D)

An error prints a message and the session goes on; leaving with a transaction open rolls it
back.
"""

from __future__ import annotations

import contextlib
import shlex
import sys
from collections.abc import Iterable, Sequence
from typing import TextIO

from tikv_raw import RawClient
from tikv_txn import Transaction, TransactionClient

from tikv_cli._clients import connect_raw, connect_txn
from tikv_cli._format import UsageError
from tikv_cli.commands import (
    RAW_COMMANDS,
    TXN_COMMANDS,
    TXN_SHELL_COMMANDS,
    ArgParser,
    _HelpShownError,
    add_kv_commands,
    run_raw,
    run_txn,
    run_txn_client,
    run_txn_once,
    runs_on_client,
)

__all__ = ["Shell", "run_shell"]

_HELP = __doc__.split("Commands::", 1)[1].split("An error", 1)[0] if __doc__ else ""


#: Commands that need an open transaction.
_IN_TXN_ONLY = tuple(name for name in TXN_SHELL_COMMANDS if name not in TXN_COMMANDS)


def _parser(names: tuple[str, ...], prog: str, hex_keys: bool, kind: str) -> ArgParser:
    parser = ArgParser(prog=prog, add_help=False)
    parser.raise_errors = True
    sub = parser.add_subparsers(dest="op", required=True, metavar="OP", parser_class=ArgParser)
    add_kv_commands(sub, names, parents=[], kind=kind)
    for action in sub.choices.values():
        action.raise_errors = True
        action.set_defaults(hex=hex_keys)
    return parser


class Shell:
    """The state of one shell session: the clients, the open transaction, the parsers."""

    def __init__(
        self,
        endpoints: Sequence[str],
        *,
        api_version: int = 1,
        timeout: float = 5.0,
        hex_keys: bool = False,
        out: TextIO,
        err: TextIO,
    ) -> None:
        self.endpoints = list(endpoints)
        self.api_version = api_version
        self.timeout = timeout
        self.out = out
        self.err = err
        self._raw: RawClient | None = None
        self._atomic: RawClient | None = None
        self._txn_client: TransactionClient | None = None
        self.txn: Transaction | None = None
        self._raw_parser = _parser(RAW_COMMANDS, "raw", hex_keys, "raw")
        self._txn_parser = _parser(TXN_SHELL_COMMANDS, "txn", hex_keys, "txn")
        begin = ArgParser(prog="begin", add_help=False)
        begin.raise_errors = True
        begin.add_argument("--pessimistic", action="store_true")
        self._begin_parser = begin

    # -- clients, opened on first use -------------------------------------------------

    def raw(self, *, atomic: bool = False) -> RawClient:
        """The raw client (the atomic one for CAS), connected on first use."""
        if atomic:
            if self._atomic is None:
                self._atomic = connect_raw(
                    self.endpoints, api_version=self.api_version, atomic=True, timeout=self.timeout
                )
            return self._atomic
        if self._raw is None:
            self._raw = connect_raw(
                self.endpoints, api_version=self.api_version, timeout=self.timeout
            )
        return self._raw

    def txn_client(self) -> TransactionClient:
        """The transactional client, connected on first use."""
        if self._txn_client is None:
            self._txn_client = connect_txn(
                self.endpoints, api_version=self.api_version, timeout=self.timeout
            )
        return self._txn_client

    def close(self) -> None:
        """Roll back an open transaction and close every client."""
        if self.txn is not None:
            try:
                self.txn.rollback()
            finally:
                self.txn = None
        for client in (self._raw, self._atomic, self._txn_client):
            if client is not None:
                client.close()

    # -- commands -----------------------------------------------------------------------

    def execute(self, line: str) -> bool:
        """Run one line; returns False when the session should end."""
        try:
            words = shlex.split(line, comments=True)
        except ValueError as exc:
            print(f"error: {exc}", file=self.err)
            return True
        if not words:
            return True
        head, rest = words[0].lower(), words[1:]
        try:
            if head in ("exit", "quit"):
                return False
            if head in ("help", "?"):
                print(_HELP.strip("\n"), file=self.out)
            elif head == "begin":
                self._begin(rest)
            elif head == "commit":
                self._commit()
            elif head == "rollback":
                self._rollback()
            elif head == "raw":
                self._raw_command(rest)
            elif head == "txn":
                self._txn_command(rest)
            elif head in _IN_TXN_ONLY or (head in TXN_COMMANDS and self.txn is not None):
                self._txn_command(words)
            elif head in RAW_COMMANDS:
                self._raw_command(words)
            else:
                raise UsageError(f"unknown command {words[0]!r} (type 'help')")
        except _HelpShownError:
            pass
        except UsageError as exc:
            print(f"error: {exc}", file=self.err)
        except Exception as exc:
            if isinstance(exc, ValueError | TypeError):
                print(f"error: {exc}", file=self.err)
            else:
                print(f"failed: {type(exc).__name__}: {exc}", file=self.err)
        return True

    def _raw_command(self, words: list[str]) -> None:
        args = self._raw_parser.parse_args(words)
        run_raw(self.raw(atomic=args.op == "cas"), args, self.out, self.err)

    def _txn_command(self, words: list[str]) -> None:
        args = self._txn_parser.parse_args(words)
        if runs_on_client(args):
            run_txn_client(self.txn_client(), args, self.out, self.err)
        elif self.txn is not None:
            run_txn(self.txn, args, self.out, self.err)
        elif args.op in _IN_TXN_ONLY:
            raise UsageError(
                f"{args.op} works inside a transaction: 'begin --pessimistic' (locks now) "
                "or 'begin' (checked at commit) first"
            )
        else:
            run_txn_once(self.txn_client(), args, self.out, self.err)

    def _begin(self, words: list[str]) -> None:
        args = self._begin_parser.parse_args(words)
        if self.txn is not None:
            raise UsageError("a transaction is already open: commit or rollback first")
        client = self.txn_client()
        self.txn = client.begin(pessimistic=args.pessimistic)
        kind = "pessimistic" if args.pessimistic else "optimistic"
        print(
            f"BEGIN ({kind}, start ts {self.txn.start_ts}); get / put / delete / scan / "
            "get-for-update / lock now work in the transaction",
            file=self.out,
        )

    def _commit(self) -> None:
        if self.txn is None:
            raise UsageError("no open transaction (use 'begin')")
        txn, self.txn = self.txn, None
        print(f"COMMIT (at {txn.commit()})", file=self.out)

    def _rollback(self) -> None:
        if self.txn is None:
            raise UsageError("no open transaction (use 'begin')")
        txn, self.txn = self.txn, None
        txn.rollback()
        print("ROLLBACK", file=self.out)

    @property
    def prompt(self) -> str:
        """The prompt: ``tikv>`` or ``tikv(txn)>`` inside a transaction."""
        return "tikv(txn)> " if self.txn is not None else "tikv> "

    def run(self, lines: Iterable[str] | None = None) -> int:
        """Read and run lines (from ``lines``, or interactively) until exit; returns 0."""
        try:
            if lines is not None:
                for line in lines:
                    if not self.execute(line):
                        break
                return 0
            interactive = sys.stdin.isatty()
            if interactive:
                with contextlib.suppress(ImportError):  # not on every platform
                    import readline  # noqa: F401  (line editing and history for input())
                print(
                    f"Connected to PD {', '.join(self.endpoints)}. Type 'help', or 'exit'.",
                    file=self.out,
                )
            while True:
                try:
                    line = input(self.prompt if interactive else "")
                except EOFError:
                    break
                except KeyboardInterrupt:
                    print("", file=self.out)
                    continue
                if not self.execute(line):
                    break
            return 0
        finally:
            self.close()


def run_shell(
    endpoints: Sequence[str],
    *,
    api_version: int = 1,
    timeout: float = 5.0,
    hex_keys: bool = False,
    lines: Iterable[str] | None = None,
    out: TextIO | None = None,
    err: TextIO | None = None,
) -> int:
    """Run a shell session against ``endpoints``; returns the exit status."""
    shell = Shell(
        endpoints,
        api_version=api_version,
        timeout=timeout,
        hex_keys=hex_keys,
        out=out or sys.stdout,
        err=err or sys.stderr,
    )
    # Connect the raw client now, so an unreachable PD fails the command at once.
    shell.raw()
    return shell.run(lines)
