"""TiKV client core.

The PD client, the timestamp oracle, the region cache, backoff, errors, configuration and
the request layer that the raw and transactional clients share.
"""

__version__ = "0.1.0"
