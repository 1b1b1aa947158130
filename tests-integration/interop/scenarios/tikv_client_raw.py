"""Raw KV through the unmodified PyPI ``tikv-client`` (client-rust core), run in its own venv.

Usage: python tikv_client_raw.py PD_ENDPOINT. Prints one JSON object of observations, with
bytes as hex, for the interop test to compare with its model and with the store's contents.
"""

import asyncio
import json
import os
import sys

from tikv_client.asynchronous import RawClient

# One key per first byte spread over the key space, so that a cluster split by first byte
# (MockCluster(regions=8)) puts them into eight different regions.
FIRST_BYTES = (0x05, 0x25, 0x45, 0x65, 0x85, 0xA5, 0xC5, 0xE5)


def hexed(pairs):
    return [[k.hex(), v.hex()] for k, v in pairs]


async def main(pd):
    client = await RawClient.connect([pd])
    out = {}
    keys = [bytes([b]) + b"interop-a" for b in FIRST_BYTES]
    for i, key in enumerate(keys):
        await client.put(key, b"value-%d" % i)
    out["get"] = [(await client.get(k)).hex() for k in keys]
    out["get_missing"] = await client.get(b"\x05no-such-key")

    batch = {bytes([b]) + b"interop-b": b"batch-%02x" % b for b in FIRST_BYTES}
    await client.batch_put(batch)
    got = await client.batch_get([*batch, b"\x06missing"])
    out["batch_get"] = sorted(hexed(got))

    # An open-ended scan from the start crosses every region; the client relies on the
    # store clipping each region's scan to the region (no end key on the first request).
    out["scan_all"] = hexed(await client.scan(b"", None, 100))
    out["scan_limited"] = hexed(await client.scan(keys[1], keys[6], 3))
    out["scan_keys"] = [k.hex() for k in await client.scan_keys(keys[2], None, 100)]

    await client.delete(keys[0])
    await client.batch_delete([keys[1], bytes([0x25]) + b"interop-b"])
    out["after_delete"] = [
        None if v is None else v.hex() for v in [await client.get(k) for k in keys[:2]]
    ]
    # [0x40, 0xA0) spans the regions holding 0x45, 0x65 and 0x85.
    await client.delete_range(b"\x40", b"\xa0")
    out["after_delete_range"] = hexed(await client.scan(b"", None, 100))

    # Column families are separate key spaces.
    await client.put(b"\x05cf-key", b"in-write", cf="write")
    out["cf_write"] = (await client.get(b"\x05cf-key", cf="write")).hex()
    out["cf_default"] = await client.get(b"\x05cf-key")
    print(json.dumps(out), flush=True)


asyncio.run(main(sys.argv[1]))
# tikv-client 0.0.4 sometimes crashes (SIGSEGV) while its Rust runtime is torn down at
# interpreter exit, after all work is done and reported; leave without that teardown.
os._exit(0)
