"""Result and error types of the raw client."""

from __future__ import annotations

from dataclasses import dataclass

from tikv_pd.errors import TiKVError

__all__ = ["Checksum", "RawKVError"]

_U64 = 2**64 - 1


@dataclass(frozen=True, slots=True)
class Checksum:
    """The checksum of the raw key-value pairs of a range (TiKV ``RawChecksum``).

    TiKV computes, for every pair, the CRC-64 of ``key + value`` with the ECMA-182
    polynomial in its reflected form with all-ones initial value and final XOR (the
    variant known as CRC-64/XZ, which is what Go's ``hash/crc64`` with the ECMA table and
    Rust's ``crc64fast`` compute), and XORs these per-pair values. XOR makes the result
    independent of order and of how the range is split into regions, so the client XORs
    the per-region checksums and adds up the counts.

    In API v2 the keys TiKV sees carry the 4-byte keyspace prefix, so both
    :attr:`crc64_xor` and :attr:`total_bytes` include it (as in client-go).

    Attributes:
        crc64_xor: XOR of the per-pair CRC-64 values (0 for an empty range).
        total_kvs: Number of pairs.
        total_bytes: Sum of the key and value lengths of all pairs.

    Example:
        >>> Checksum(0b1010, 1, 5).merge(Checksum(0b0110, 2, 7))
        Checksum(crc64_xor=12, total_kvs=3, total_bytes=12)

    """

    crc64_xor: int = 0
    total_kvs: int = 0
    total_bytes: int = 0

    def __post_init__(self) -> None:
        for name in ("crc64_xor", "total_kvs", "total_bytes"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool):
                raise TypeError(f"Checksum.{name} must be an int, got {type(value).__name__}")
            if value < 0:
                raise ValueError(f"Checksum.{name} must be non-negative, got {value}")
        if self.crc64_xor > _U64:
            raise ValueError(f"Checksum.crc64_xor must fit in 64 bits, got {self.crc64_xor}")

    def merge(self, other: Checksum) -> Checksum:
        """Combine the checksums of two disjoint sets of pairs."""
        return Checksum(
            self.crc64_xor ^ other.crc64_xor,
            self.total_kvs + other.total_kvs,
            self.total_bytes + other.total_bytes,
        )


class RawKVError(TiKVError):
    """TiKV refused a raw command (the response's ``error`` field, or a pair's key error).

    Typical causes: a TTL on a cluster without ``storage.enable-ttl`` ("TTL is not
    enabled"), a key larger than ``max-key-size``, an API version the cluster does not
    serve, a column family it does not know.

    Attributes:
        command: The TiKV command (``"RawPut"``, ``"RawScan"``, ...).
        server_message: TiKV's text, verbatim.

    """

    def __init__(self, command: str, server_message: str) -> None:
        super().__init__(server_message)
        self.command = command
        self.server_message = server_message

    def _describe(self) -> str:
        return f"TiKV refused {self.command}: {self.server_message}"
