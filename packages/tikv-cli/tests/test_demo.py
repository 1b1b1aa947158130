"""``tikv demo`` end to end on an embedded cluster."""

from __future__ import annotations

import io
import re

from _cli_runner import Tikv
from tikv_cli.demo import run_demo
from tikv_mockstore import MockCluster


def test_demo_on_an_embedded_cluster(tikv: Tikv) -> None:
    result = tikv("demo")
    assert result.code == 0, result.out + result.err
    out = result.out
    # The values it put came back.
    assert "get('demo/greeting')  → 'hello, TiKV'" in out
    for fruit, colour in [("apple", "red"), ("banana", "yellow"), ("plum", "purple")]:
        assert f"demo/fruit/{fruit}" in out and colour in out
    assert "delete('demo/fruit/kiwi'); get  → None" in out
    # Put with a 30 s TTL just before; TiKV counts the rest in whole seconds, so a second
    # boundary in between reads 29.
    assert re.search(r"get_key_ttl\('demo/session'\)  → (29|30) s", out), out
    assert "swapped=False, previous='2'" in out
    assert "get(counter)  → '2'" in out
    assert " failed: " not in out  # how a failed step is reported
    assert "Cluster stopped." in out
    assert "new txn: get(alice), get(bob)  → '100', '50'" in out
    assert "WriteConflictError" in out
    assert "t1 retries (attempt 1): reads 110, writes 80" in out
    assert "get(alice)  → '80'" in out
    assert "get_for_update(bob)  → '50' (bob is locked)" in out
    assert "put(bob, bob + 5); commit  → committed at ts" in out
    assert "snapshot(" in out and ".get(carol)  → 'version 1'" in out
    assert "new txn: get(carol)  → 'version 2'" in out
    assert "not available" not in out


def test_demo_against_a_given_cluster_reports_missing_ttl() -> None:
    # An API v1 cluster without TTL support: the tour says so and goes on.
    with MockCluster(stores=1) as cluster:
        out = io.StringIO()
        code = run_demo(cluster.pd_endpoints, api_version=1, out=out)
        text = out.getvalue()
    assert code == 0, text
    assert "'hello, TiKV'" in text
    assert "TTL: not available" in text
