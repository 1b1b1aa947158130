"""The raw scenario of ``scenarios/tikv_python_raw.py``, through this project's RawClient.

Same operations, same keys, same JSON shape (bytes as hex), so the interop test can demand
identical observations from both clients against one cluster. Where the two APIs differ the
mapping is spelled out: tikv-python's ``ttl()`` answers ``None`` for a key without a TTL where
ours answers ``0``; its ``compare_and_swap`` returns ``(swapped, previous)``, ours
``(previous, swapped)``; its ``scan(prefix=...)`` is our ``scan_iter`` over the prefix range.
"""

from __future__ import annotations

from typing import Any

from tikv_raw import RawClient, prefix_range

FIRST_BYTES = (0x05, 0x25, 0x45, 0x65, 0x85, 0xA5, 0xC5, 0xE5)


def _hexed(pairs: Any) -> list[list[str]]:
    return [[k.hex(), v.hex()] for k, v in pairs]


def run(pd: str) -> dict[str, Any]:
    """Run the scenario against the cluster behind ``pd``; return the observations."""
    out: dict[str, Any] = {}
    with RawClient.connect([pd]) as client:
        keys = [bytes([b]) + b"py" for b in FIRST_BYTES]
        for i, key in enumerate(keys):
            client.put(key, b"value-%d" % i)
        out["get"] = [client.get(k).hex() for k in keys]  # type: ignore[union-attr]
        out["get_many"] = sorted(_hexed(client.batch_get([*keys[:3], b"\x01absent"]).items()))
        client.batch_put({bytes([b]) + b"pz": b"m" for b in FIRST_BYTES})
        low, high = prefix_range(b"\x45")
        out["scan_prefix"] = [k.hex() for k, _ in client.scan_iter(low, high)]
        out["scan_all"] = _hexed(client.scan_iter(b"", None))
        out["scan_reverse"] = [k.hex() for k, _ in client.scan_iter(b"", None, reverse=True)]
        out["scan_reverse_bounded"] = [
            k.hex() for k, _ in client.scan_iter(b"\x20", b"\x60", reverse=True)
        ]
        out["scan_limit"] = [k.hex() for k, _ in client.scan(b"", None, limit=3, key_only=True)]

        client.put(b"\x05ttl-key", b"expiring", ttl=60)
        out["ttl"] = client.get_key_ttl(b"\x05ttl-key")
        out["ttl_none"] = client.get_key_ttl(keys[0]) or None

        checksum = client.checksum()
        out["checksum"] = [checksum.crc64_xor, checksum.total_kvs, checksum.total_bytes]
        prefixed = client.checksum(*prefix_range(b"\x85"))
        out["checksum_prefix"] = [prefixed.crc64_xor, prefixed.total_kvs, prefixed.total_bytes]

        client.delete(keys[0])
        client.batch_delete([keys[1], keys[2]])
        out["after_delete"] = [client.get(k) for k in keys[:3]]
        client.delete_prefix(b"\xc5")
        client.delete_range(b"\xe0", None)
        out["after_delete_range"] = [k.hex() for k, _ in client.scan_iter(b"", None)]

    with RawClient.connect([pd], atomic=True) as atomic:
        results = [
            atomic.compare_and_swap(b"\x05cas", None, b"one"),
            atomic.compare_and_swap(b"\x05cas", b"wrong", b"two"),
            atomic.compare_and_swap(b"\x05cas", b"one", b"three"),
        ]
        out["cas"] = [
            [swapped, None if previous is None else previous.hex()] for previous, swapped in results
        ]
        out["cas_final"] = atomic.get(b"\x05cas").hex()  # type: ignore[union-attr]
    return out
