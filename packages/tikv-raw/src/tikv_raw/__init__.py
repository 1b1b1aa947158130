"""Raw key-value client for TiKV, in sync and asyncio flavours.

:class:`RawClient` (blocking) and :class:`AsyncRawClient` (asyncio) have the same methods;
the blocking one runs the asyncio one on a private event loop thread. Errors derive from
:class:`tikv_pd.errors.TiKVError`; the ones a raw client raises are re-exported here.
"""

from tikv_pd.errors import (
    ClientClosedError,
    PDError,
    RegionError,
    StoreUnavailableError,
    TiKVError,
    TimeoutError,
    UndeterminedError,
)

from tikv_raw._async_client import AsyncRawClient
from tikv_raw._sync_client import RawClient
from tikv_raw._types import Checksum, RawKVError
from tikv_raw._validate import prefix_range

__all__ = [
    "AsyncRawClient",
    "Checksum",
    "ClientClosedError",
    "PDError",
    "RawClient",
    "RawKVError",
    "RegionError",
    "StoreUnavailableError",
    "TiKVError",
    "TimeoutError",
    "UndeterminedError",
    "prefix_range",
]

__version__ = "0.1.0"
