"""Raw key-value client for TiKV, in sync and asyncio flavours."""

from tikv_raw._async_client import AsyncRawClient
from tikv_raw._types import Checksum, RawKVError

__all__ = ["AsyncRawClient", "Checksum", "RawKVError"]

__version__ = "0.1.0"
