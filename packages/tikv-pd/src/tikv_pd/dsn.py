"""The ``tikv://`` path that names a TiKV cluster (client-go ``config.ParsePath``).

TiDB and other client-go users name a cluster with one string, e.g.
``tikv://pd1:2379,pd2:2379?disableGC=true&keyspaceName=SomeKeyspace``: the PD endpoints,
comma-separated, as the URL's host part, and two options in the query. :func:`parse_path`
reads it into a :class:`TiKVPath`, whose fields go straight to the clients::

    path = parse_path("tikv://pd1:2379,pd2:2379?keyspaceName=ks1")
    client = await AsyncTransactionClient.connect(path.endpoints, keyspace=path.keyspace)

What client-go accepts (``config/config.go`` ``ParsePath``): the scheme ``tikv`` in any
case; ``disableGC`` = ``true`` / ``false`` in any case, or empty / absent (false), anything
else an error; ``keyspaceName`` any string, empty meaning none.

Where client-go is lax we refuse, because a part it drops is a part the writer meant to say
something with: an unknown or repeated query parameter, a path, a fragment or user
information after ``tikv://``, an empty endpoint (``tikv://`` alone, or ``a:1,,b:2``) and an
endpoint without a port all raise :class:`ValueError` naming what was wrong. Each endpoint
is checked as :func:`tikv_pd.channels.parse_endpoint` checks PD addresses (``host:port`` or
``[v6]:port``) and returned as written.

``disable_gc`` is a flag for the program that schedules GC — TiDB reads it to decide
whether to start its GC worker. This library never runs GC on its own
(:func:`tikv_txn.gc.run_gc` runs only when called), so the flag is handed back for the
caller to honour, as client-go hands it to TiDB.
"""

from __future__ import annotations

import urllib.parse
from dataclasses import dataclass

from tikv_pd.channels import parse_endpoint

__all__ = ["TIKV_SCHEME", "TiKVPath", "parse_path"]

#: The scheme of a cluster path (compared case-insensitively, as client-go does).
TIKV_SCHEME = "tikv"

_DISABLE_GC = "disableGC"
_KEYSPACE_NAME = "keyspaceName"
_KNOWN_PARAMETERS = (_DISABLE_GC, _KEYSPACE_NAME)


@dataclass(frozen=True, slots=True)
class TiKVPath:
    """A parsed ``tikv://`` path.

    Attributes:
        endpoints: The PD endpoints, in the order written (at least one).
        disable_gc: The ``disableGC`` option: the cluster's owner asks that this program
            not run GC.
        keyspace: The ``keyspaceName`` option, or ``None`` when absent or empty (the
            ``keyspace`` argument of the clients' ``connect``).

    """

    endpoints: tuple[str, ...]
    disable_gc: bool = False
    keyspace: str | None = None


def _parse_disable_gc(raw: str) -> bool:
    value = raw.lower()
    if value == "true":
        return True
    if value in ("false", ""):
        return False
    raise ValueError(f"tikv path: {_DISABLE_GC} must be true or false, got {raw!r}")


def parse_path(path: str) -> TiKVPath:
    """Parse ``tikv://host:port[,host:port…][?disableGC=…&keyspaceName=…]``.

    Raises:
        TypeError: ``path`` is not a str.
        ValueError: Another scheme, no endpoint, an endpoint that is not ``host:port``, a
            ``disableGC`` other than true / false, an unknown or repeated parameter, or a
            path, fragment or user information in the URL. The message names the part.

    """
    if not isinstance(path, str):
        raise TypeError(f"tikv path must be a str, got {type(path).__name__}")
    try:
        url = urllib.parse.urlsplit(path)
    except ValueError as exc:  # e.g. an unbalanced "[" in the host part
        raise ValueError(f"tikv path {path!r} is not a URL: {exc}") from exc
    if url.scheme.lower() != TIKV_SCHEME:
        raise ValueError(f"tikv path {path!r}: scheme must be {TIKV_SCHEME!r}, got {url.scheme!r}")
    if "@" in url.netloc:
        raise ValueError(f"tikv path {path!r} must not carry user information")
    if url.path not in ("", "/"):
        raise ValueError(f"tikv path {path!r} must not have a path, got {url.path!r}")
    if url.fragment:
        raise ValueError(f"tikv path {path!r} must not have a fragment")
    if not url.netloc:
        raise ValueError(f"tikv path {path!r} names no PD endpoint")

    endpoints: list[str] = []
    for endpoint in url.netloc.split(","):
        if not endpoint:
            raise ValueError(f"tikv path {path!r} has an empty endpoint")
        if endpoint != endpoint.strip() or any(c.isspace() for c in endpoint):
            raise ValueError(f"tikv path {path!r}: endpoint {endpoint!r} contains whitespace")
        try:
            parse_endpoint(endpoint)
        except ValueError as exc:
            raise ValueError(f"tikv path {path!r}: {exc}") from exc
        endpoints.append(endpoint)

    seen: dict[str, str] = {}
    # keep_blank_values: "?disableGC" and "?disableGC=" both mean an empty value, as in Go.
    for name, value in urllib.parse.parse_qsl(url.query, keep_blank_values=True):
        if name not in _KNOWN_PARAMETERS:
            raise ValueError(
                f"tikv path {path!r}: unknown parameter {name!r} "
                f"(known: {', '.join(_KNOWN_PARAMETERS)})"
            )
        if name in seen:
            raise ValueError(f"tikv path {path!r}: parameter {name!r} is given twice")
        seen[name] = value

    return TiKVPath(
        endpoints=tuple(endpoints),
        disable_gc=_parse_disable_gc(seen.get(_DISABLE_GC, "")),
        keyspace=seen.get(_KEYSPACE_NAME) or None,
    )
