"""The tikv:// cluster path: client-go TestParsePath and the forms we refuse."""

from __future__ import annotations

import pytest
from tikv_mockstore import MockCluster
from tikv_pd.dsn import TiKVPath, parse_path
from tikv_pd.pd_client import PDClient


def test_parse_path_matches_client_go() -> None:
    # client-go config/config_test.go TestParsePath.
    path = parse_path("tikv://node1:2379,node2:2379")
    assert path.endpoints == ("node1:2379", "node2:2379")
    assert path.disable_gc is False
    assert path.keyspace is None

    assert parse_path("tikv://node1:2379") == TiKVPath(endpoints=("node1:2379",))

    path = parse_path("tikv://node1:2379?disableGC=true&keyspaceName=DEFAULT")
    assert path.disable_gc is True
    assert path.keyspace == "DEFAULT"


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("TIKV://a:1", TiKVPath(endpoints=("a:1",))),  # scheme in any case
        ("tikv://a:1/", TiKVPath(endpoints=("a:1",))),
        ("tikv://a:1?disableGC=TRUE", TiKVPath(endpoints=("a:1",), disable_gc=True)),
        ("tikv://a:1?disableGC=False", TiKVPath(endpoints=("a:1",))),
        ("tikv://a:1?disableGC=", TiKVPath(endpoints=("a:1",))),
        ("tikv://a:1?disableGC", TiKVPath(endpoints=("a:1",))),
        ("tikv://a:1?keyspaceName=", TiKVPath(endpoints=("a:1",))),
        ("tikv://a:1?keyspaceName=my%20ks", TiKVPath(endpoints=("a:1",), keyspace="my ks")),
        (
            "tikv://[::1]:2379,[fe80::2]:2380,10.0.0.3:2379",
            TiKVPath(endpoints=("[::1]:2379", "[fe80::2]:2380", "10.0.0.3:2379")),
        ),
        (
            "tikv://pd:2379?keyspaceName=ks&disableGC=true",
            TiKVPath(endpoints=("pd:2379",), disable_gc=True, keyspace="ks"),
        ),
    ],
)
def test_parse_path_accepts(text: str, expected: TiKVPath) -> None:
    assert parse_path(text) == expected


@pytest.mark.parametrize(
    ("text", "match"),
    [
        ("http://a:1", "scheme must be 'tikv', got 'http'"),
        ("a:1", "scheme must be 'tikv'"),
        ("", "scheme must be 'tikv', got ''"),
        ("tikv://", "names no PD endpoint"),
        ("tikv://?disableGC=true", "names no PD endpoint"),
        ("tikv://a:1,,b:2", "empty endpoint"),
        ("tikv://a:1,", "empty endpoint"),
        ("tikv://a:1,b", "has no port"),
        ("tikv://a:99999", "invalid port"),
        ("tikv://a:1?disableGC=yes", "disableGC must be true or false, got 'yes'"),
        ("tikv://a:1?disableGC=1", "disableGC must be true or false"),
        ("tikv://a:1?cluster=1", "unknown parameter 'cluster'"),
        ("tikv://a:1?disablegc=true", "unknown parameter 'disablegc'"),
        ("tikv://a:1?keyspaceName=a&keyspaceName=b", "'keyspaceName' is given twice"),
        ("tikv://a:1/db", "must not have a path, got '/db'"),
        ("tikv://a:1#frag", "must not have a fragment"),
        ("tikv://root:pw@a:1", "must not carry user information"),
        ("tikv://a:1, b:2", "contains whitespace"),
        ("tikv://[::1:2379", "is not a URL"),
    ],
)
def test_parse_path_rejects(text: str, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        parse_path(text)


def test_parse_path_rejects_non_strings() -> None:
    with pytest.raises(TypeError, match="tikv path must be a str, got bytes"):
        parse_path(b"tikv://a:1")  # type: ignore[arg-type]


async def test_a_client_connects_to_the_endpoints_of_a_path() -> None:
    with MockCluster(stores=1, regions=1, pd_members=2) as cluster:
        path = parse_path("tikv://" + ",".join(cluster.pd_endpoints) + "?disableGC=true")
        assert list(path.endpoints) == list(cluster.pd_endpoints)
        async with await PDClient.connect(path.endpoints) as client:
            assert client.cluster_id == cluster.cluster_id
            assert await client.get_timestamp() > 0
