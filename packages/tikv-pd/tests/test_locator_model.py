"""RegionLocator against a model: random region layouts and keys, raw and txn key spaces."""

from __future__ import annotations

import bisect
import random
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from tikv_pd.codec import CodecV1, encode_bytes
from tikv_pd.locator import RegionLocator
from tikv_pd.pd_client import PDClient

sys.path.insert(0, str(Path(__file__).parent))
from _pd_fake import FakePDCluster

SCENARIOS = 25


@pytest.fixture
async def fake_and_client() -> AsyncIterator[tuple[FakePDCluster, PDClient]]:
    async with FakePDCluster(members=1) as fake:
        client = await PDClient.connect(fake.endpoints)
        try:
            yield fake, client
        finally:
            await client.close()


def random_key(rng: random.Random) -> bytes:
    # Short keys over a small alphabet collide with boundaries often, and include the
    # bytes 0x00 / 0xff that memcomparable encoding treats specially.
    return bytes(rng.choice(b"\x00\x01abz\xfe\xff") for _ in range(rng.randint(0, 10)))


def model_index(boundaries: list[bytes], key: bytes) -> int:
    """Index of the region containing ``key`` when regions are cut at ``boundaries``."""
    return bisect.bisect_right(boundaries, key)


@pytest.mark.parametrize("mode", ["raw", "txn"])
async def test_grouping_and_splitting_match_the_model(
    fake_and_client: tuple[FakePDCluster, PDClient], mode: str
) -> None:
    fake, client = fake_and_client
    rng = random.Random(20261121 + (mode == "txn"))
    for _ in range(SCENARIOS):
        boundaries = sorted({k for k in (random_key(rng) for _ in range(rng.randint(0, 12))) if k})
        pd_boundaries = [encode_bytes(b) for b in boundaries] if mode == "txn" else boundaries
        fake.set_regions(pd_boundaries, stores=[1, 2])
        locator = RegionLocator(client, codec=CodecV1(mode))  # type: ignore[arg-type]
        region_ids = [10 + i for i in range(len(boundaries) + 1)]

        keys = [random_key(rng) for _ in range(rng.randint(1, 40))]
        groups = await locator.group_keys_by_region(keys)
        seen: dict[int, list[bytes]] = {}
        for region, ks in groups.items():
            for k in ks:
                assert region.contains(k)
            seen[region.id] = ks
        expected: dict[int, list[bytes]] = {}
        for k in keys:
            expected.setdefault(region_ids[model_index(boundaries, k)], []).append(k)
        assert seen == expected

        start, end = sorted((random_key(rng), random_key(rng)))
        if end == start:
            end = b""
        parts = await locator.split_range(start, end)
        assert parts[0][1] == start and parts[-1][2] == end
        for (region, lo, hi), nxt in zip(parts, [*parts[1:], None], strict=True):
            assert region.id == region_ids[model_index(boundaries, lo)]
            if nxt is not None:
                assert hi == nxt[1] == region.end_key
        for key in keys:
            region = await locator.locate_key(key)
            assert region.id == region_ids[model_index(boundaries, key)]
            if key:
                by_end = await locator.locate_end_key(key)
                # As an exclusive end, a key at a boundary belongs to the region before.
                assert by_end.id == region_ids[bisect.bisect_left(boundaries, key)]
        await locator.close()
