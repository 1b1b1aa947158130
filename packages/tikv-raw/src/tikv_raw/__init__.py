"""Raw key-value client for TiKV, in sync and asyncio flavours."""

__version__ = "0.1.0"
