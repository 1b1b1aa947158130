"""The whole raw API of the unmodified PyPI ``tikv-python`` client, run in its own venv.

Usage: python tikv_python_raw.py PD_ENDPOINT. Prints one JSON object of observations.
The cluster must accept TTLs (storage API V1TTL), as a TiKV with ``enable-ttl`` does.
"""

import json
import sys

from tikv import RawClient

FIRST_BYTES = (0x05, 0x25, 0x45, 0x65, 0x85, 0xA5, 0xC5, 0xE5)


def hexed(pairs):
    return [[k.hex(), v.hex()] for k, v in pairs]


def main(pd):
    out = {}
    with RawClient([pd], timeout=10.0) as client:
        keys = [bytes([b]) + b"py" for b in FIRST_BYTES]
        for i, key in enumerate(keys):
            client.put(key, b"value-%d" % i)
        out["get"] = [client.get(k).hex() for k in keys]
        out["get_many"] = sorted(hexed(client.get_many([*keys[:3], b"\x01absent"]).items()))
        client.put_many({bytes([b]) + b"pz": b"m" for b in FIRST_BYTES})
        out["scan_prefix"] = [k.hex() for k, _ in client.scan(prefix=b"\x45")]
        out["scan_all"] = hexed(client.scan())
        out["scan_reverse"] = [k.hex() for k in client.scan_keys(reverse=True)]
        # A reverse scan whose upper bound is a region start asks PD for the previous region.
        out["scan_reverse_bounded"] = [
            k.hex() for k in client.scan_keys(b"\x20", b"\x60", reverse=True)
        ]
        out["scan_limit"] = [k.hex() for k in client.scan_keys(limit=3)]

        client.put(b"\x05ttl-key", b"expiring", ttl=60)
        out["ttl"] = client.ttl(b"\x05ttl-key")
        out["ttl_none"] = client.ttl(keys[0])

        checksum = client.checksum()
        out["checksum"] = list(checksum)
        out["checksum_prefix"] = list(client.checksum(prefix=b"\x85"))

        client.delete(keys[0])
        client.delete_many([keys[1], keys[2]])
        out["after_delete"] = [client.get(k) for k in keys[:3]]
        client.delete_range(prefix=b"\xc5")
        client.delete_range(b"\xe0", None)
        out["after_delete_range"] = [k.hex() for k in client.scan_keys()]

    with RawClient([pd], atomic=True) as atomic:
        first = atomic.compare_and_swap(b"\x05cas", None, b"one")
        second = atomic.compare_and_swap(b"\x05cas", b"wrong", b"two")
        third = atomic.compare_and_swap(b"\x05cas", b"one", b"three")
        out["cas"] = [
            [r.swapped, None if r.previous is None else r.previous.hex()]
            for r in (first, second, third)
        ]
        out["cas_final"] = atomic.get(b"\x05cas").hex()
    print(json.dumps(out))


main(sys.argv[1])
