"""``tikv shell``: scripted sessions against a MockCluster."""

from __future__ import annotations

import io

import pytest
from tikv_cli._clients import txn_available
from tikv_cli.shell import run_shell
from tikv_mockstore import MockCluster


def session(cluster: MockCluster, *lines: str) -> tuple[str, str]:
    out, err = io.StringIO(), io.StringIO()
    code = run_shell(cluster.pd_endpoints, lines=list(lines), out=out, err=err)
    assert code == 0
    return out.getvalue(), err.getvalue()


def test_raw_commands_and_errors(raw_cluster: MockCluster) -> None:
    out, err = session(
        raw_cluster,
        "put 'shell/a key' 'a value'",
        "raw put shell/b 2 --ttl 100",
        "get 'shell/a key'",
        "scan shell/ shell0",
        "# a comment",
        "",
        "frobnicate",
        "get",
        "put 'unterminated",
        "get shell/missing",
        "raw delete shell/b",
        "scan shell/ shell0 --keys-only",
        "exit",
        "get 'shell/a key'",  # not run: the session ended
    )
    assert out.splitlines() == [
        "OK",
        "OK",
        "a value",
        "shell/a key\ta value",
        "shell/b\t2",
        "OK",
        "shell/a key",
    ]
    assert err.splitlines() == [
        "error: unknown command 'frobnicate' (type 'help')",
        "error: the following arguments are required: KEY",
        "error: No closing quotation",
        "(not found)",
    ]


def test_help_and_transaction_state_errors(txn_cluster: MockCluster) -> None:
    out, err = session(txn_cluster, "help", "commit", "rollback")
    assert "begin [--pessimistic]" in out
    assert err.splitlines() == [
        "error: no open transaction (use 'begin')",
        "error: no open transaction (use 'begin')",
    ]


@pytest.mark.skipif(not txn_available(), reason="tikv-txn provides no TransactionClient")
def test_transactions(txn_cluster: MockCluster) -> None:
    out, err = session(
        txn_cluster,
        "begin",
        "put acct/x 1",
        "put acct/y 2",
        "get acct/x",
        "begin",
        "rollback",
        "begin",
        "put acct/z 3",
        "rollback",
        "txn get acct/z",
        "begin",
        "put acct/x 10",
        "commit",
        "txn scan acct/ acct0",
        "txn put acct/w 0",
    )
    lines = out.splitlines()
    assert lines[0].startswith("BEGIN (optimistic)")
    assert lines[1] == "1"  # the transaction reads its own write
    assert lines[2] == "ROLLBACK"  # the first transaction, with x and y
    assert lines[3].startswith("BEGIN") and lines[4] == "ROLLBACK"
    assert lines[5].startswith("BEGIN")
    assert lines[6].startswith("COMMIT (at ")
    assert lines[7] == "acct/x\t10"  # y and z were rolled back
    assert lines[8].startswith("OK (committed at ")
    assert len(lines) == 9
    assert "error: a transaction is already open: commit or rollback first" in err
    assert "(not found)" in err  # acct/z was rolled back
