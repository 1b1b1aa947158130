r"""Keys and values on the command line: parse UTF-8 text or hex, and show bytes readably.

Without ``--hex`` a key or value is the UTF-8 encoding of the argument, and output is shown
as text when it is printable UTF-8, else with Python byte escapes (``a\\x00b``). With
``--hex`` both directions use lowercase hex (``6b6579``).
"""

from __future__ import annotations

import binascii

__all__ = ["UsageError", "parse_bytes", "parse_endpoints", "show_bytes"]


class UsageError(Exception):
    """Bad input on the command line: the message says what is wrong (exit code 2)."""


def parse_bytes(text: str, *, hex_input: bool, what: str = "key") -> bytes:
    """Turn a command-line argument into bytes: UTF-8 text, or hex with ``hex_input``.

    Raises:
        UsageError: The text is not valid hex (``hex_input``) or cannot be encoded.

    """
    if hex_input:
        cleaned = text.strip().removeprefix("0x").removeprefix("0X")
        try:
            return binascii.unhexlify(cleaned)
        except (binascii.Error, ValueError):
            raise UsageError(
                f"{what} {text!r} is not valid hex (expected pairs of 0-9a-f digits)"
            ) from None
    try:
        return text.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise UsageError(f"{what} {text!r} cannot be encoded as UTF-8: {exc.reason}") from None


def show_bytes(data: bytes, *, hex_output: bool = False) -> str:
    """Bytes for display: hex with ``hex_output``, else text if printable UTF-8, else escaped."""
    if hex_output:
        return data.hex()
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        return _escape(data)
    if text.isprintable():
        return text
    return _escape(data)


def _escape(data: bytes) -> str:
    # repr(bytes) without the b'' wrapper: printable ASCII as is, the rest as \xNN escapes.
    return repr(data)[2:-1]


def parse_endpoints(text: str) -> list[str]:
    """Split ``host:port,host:port`` into a list of PD endpoints, checking each one.

    Raises:
        UsageError: An endpoint is empty or lacks a valid port.

    """
    endpoints: list[str] = []
    for part in text.split(","):
        endpoint = part.strip()
        if not endpoint:
            raise UsageError(f"--pd {text!r}: empty endpoint in the list")
        bare = endpoint.split("://", 1)[-1]
        host, sep, port = bare.rpartition(":")
        if not sep or not host:
            raise UsageError(f"--pd {text!r}: endpoint {endpoint!r} must be host:port")
        if not port.isdigit() or not 0 < int(port) < 65536:
            raise UsageError(f"--pd {text!r}: endpoint {endpoint!r} has an invalid port")
        endpoints.append(endpoint)
    return endpoints
