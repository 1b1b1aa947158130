"""``tikv shell``: scripted sessions against a MockCluster."""

from __future__ import annotations

import io

from tikv_cli.shell import Shell, run_shell
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
    assert lines[0].startswith("BEGIN (optimistic, start ts ")
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


def test_pessimistic_transactions_lock_keys_for_other_sessions(txn_cluster: MockCluster) -> None:
    a_out, a_err, b_out, b_err = (io.StringIO() for _ in range(4))
    a = Shell(txn_cluster.pd_endpoints, out=a_out, err=a_err)
    b = Shell(txn_cluster.pd_endpoints, out=b_out, err=b_err)
    try:
        for line in ("begin --pessimistic", "get-for-update pess/p", "lock pess/q pess/r"):
            a.execute(line)
        a.execute("put pess/p 1")
        for line in (
            "get-for-update pess/p",  # outside a transaction
            "begin --pessimistic",
            "get-for-update pess/p --no-wait",
            "lock pess/q --no-wait",
            "rollback",
        ):
            b.execute(line)
        a.execute("commit")
        for line in ("begin --pessimistic", "get-for-update pess/p", "lock pess/q", "commit"):
            b.execute(line)
        b.execute("begin")  # optimistic: get-for-update reads, the check is at commit
        b.execute("get-for-update pess/p")
        b.execute("rollback")
    finally:
        a.close()
        b.close()
    a_lines = a_out.getvalue().splitlines()
    assert a_lines[0].startswith("BEGIN (pessimistic, start ts ")
    assert len(a_lines) == 3 and a_lines[1] == "LOCKED 2 keys"
    assert a_lines[2].startswith("COMMIT (at ")
    assert a_err.getvalue() == "(not found)\n"  # pess/p did not exist when it was locked
    b_errors = b_err.getvalue().splitlines()
    assert b_errors[0] == (
        "error: get-for-update works inside a transaction: 'begin --pessimistic' (locks now) "
        "or 'begin' (checked at commit) first"
    )
    # While a holds the locks, b's no-wait lock attempts fail at once.
    assert b_errors[1].startswith("failed: LockWaitTimeoutError: ")
    assert "pess/p" in b_errors[1]
    assert b_errors[2].startswith("failed: LockWaitTimeoutError: ")
    assert "pess/q" in b_errors[2]
    assert len(b_errors) == 3
    b_lines = b_out.getvalue().splitlines()
    assert b_lines[1] == "ROLLBACK"
    # After a committed, b locks and reads a's write.
    assert b_lines[2].startswith("BEGIN (pessimistic")
    assert b_lines[3:5] == ["1", "LOCKED 1 key"]
    assert b_lines[5].startswith("COMMIT (at ")
    assert b_lines[6].startswith("BEGIN (optimistic") and b_lines[7:] == ["1", "ROLLBACK"]


def test_client_level_txn_commands(txn_cluster: MockCluster) -> None:
    out, err = session(
        txn_cluster,
        "txn put shellgc/a 1",
        "txn put shellgc/b 2",
        "txn get shellgc/a --stale 3600",
        "begin",
        "txn delete-range shellgc/b shellgc0",  # runs outside the open transaction
        "scan shellgc/ shellgc0",
        "rollback",
        "txn scan shellgc/ shellgc0",
        "txn gc 1",
    )
    lines = out.splitlines()
    assert lines[0].startswith("OK (committed at ") and lines[1].startswith("OK (committed at ")
    assert lines[2].startswith("BEGIN (optimistic")
    assert lines[3].startswith("OK (") and "region" in lines[3]
    assert lines[4:7] == ["shellgc/a\t1", "ROLLBACK", "shellgc/a\t1"]
    assert lines[7].startswith("GC safepoint: ")
    assert err.startswith("(not found at ts ")
