"""TiKV client core: PD client, timestamp oracle, region cache, backoff, errors and the shared request layer."""

__version__ = "0.1.0"
