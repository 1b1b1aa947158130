"""TiKV client core.

The PD client, the timestamp oracle, the region cache, backoff, errors, configuration and
the request layer that the raw and transactional clients share. Most applications use
``tikv_raw`` or ``tikv_txn``; this package is what they are built on, and what a program
needs to talk to PD directly::

    from tikv_pd import PDClient

    pd = await PDClient.connect(["127.0.0.1:2379"])
    ts = await pd.get_timestamp()
    await pd.close()

Modules: :mod:`~tikv_pd.errors` (the error hierarchy) and :mod:`~tikv_pd.key_errors`
(``kvrpcpb.KeyError`` to those errors), :mod:`~tikv_pd.config` (settings with
client-go's defaults), :mod:`~tikv_pd.backoff`, :mod:`~tikv_pd.codec` (key encodings),
:mod:`~tikv_pd.oracle` and :mod:`~tikv_pd.pd_oracle` (timestamps),
:mod:`~tikv_pd.pd_client`, :mod:`~tikv_pd.region_cache` and :mod:`~tikv_pd.locator`
(cluster metadata), :mod:`~tikv_pd.transport` and :mod:`~tikv_pd.request` (the request
layer), :mod:`~tikv_pd.rangetask` (a job run over every region of a key range),
:mod:`~tikv_pd.sync` (the event loop thread behind every sync facade), :mod:`~tikv_pd.dsn`
(``tikv://`` cluster paths), :mod:`~tikv_pd.execdetails` (TiKV's time details as client-go
prints them).
"""

from tikv_pd.config import Config, SecurityConfig, TransactionOptions
from tikv_pd.errors import (
    ClientClosedError,
    PDError,
    RegionError,
    StoreUnavailableError,
    TiKVError,
    TimeoutError,
    TxnError,
    UndeterminedError,
)
from tikv_pd.oracle import compose_ts, extract_logical, extract_physical
from tikv_pd.pd_client import PDClient
from tikv_pd.pd_oracle import PDOracle

__all__ = [
    "ClientClosedError",
    "Config",
    "PDClient",
    "PDError",
    "PDOracle",
    "RegionError",
    "SecurityConfig",
    "StoreUnavailableError",
    "TiKVError",
    "TimeoutError",
    "TransactionOptions",
    "TxnError",
    "UndeterminedError",
    "compose_ts",
    "extract_logical",
    "extract_physical",
]

__version__ = "0.1.0"
