from __future__ import annotations

import pytest
from tikv_cli._format import UsageError, parse_bytes, parse_endpoints, show_bytes


def test_parse_bytes_text_and_hex() -> None:
    assert parse_bytes("héllo", hex_input=False) == "héllo".encode()
    assert parse_bytes("00ff6b", hex_input=True) == b"\x00\xffk"
    assert parse_bytes("0x6b6579", hex_input=True) == b"key"
    assert parse_bytes("", hex_input=True) == b""


@pytest.mark.parametrize("text", ["abc", "zz", "0x1"])
def test_parse_bytes_bad_hex(text: str) -> None:
    with pytest.raises(UsageError, match="not valid hex"):
        parse_bytes(text, hex_input=True, what="key")


def test_parse_bytes_unencodable_text() -> None:
    with pytest.raises(UsageError, match="UTF-8"):
        parse_bytes("\udcff", hex_input=False)


def test_show_bytes() -> None:
    assert show_bytes(b"plain text") == "plain text"
    assert show_bytes("ünï".encode()) == "ünï"
    assert show_bytes(b"a\x00b\xff") == "a\\x00b\\xff"
    assert show_bytes(b"tab\there") == "tab\\there"
    assert show_bytes(b"\x01\xab", hex_output=True) == "01ab"


def test_parse_endpoints() -> None:
    assert parse_endpoints("127.0.0.1:2379") == ["127.0.0.1:2379"]
    assert parse_endpoints("a:1, b:2") == ["a:1", "b:2"]
    assert parse_endpoints("http://pd:2379") == ["http://pd:2379"]


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("pd", "must be host:port"),
        ("pd:", "invalid port"),
        ("pd:99999", "invalid port"),
        ("pd:x", "invalid port"),
        ("a:1,,b:2", "empty endpoint"),
        (":2379", "must be host:port"),
    ],
)
def test_parse_endpoints_errors(text: str, message: str) -> None:
    with pytest.raises(UsageError, match=message):
        parse_endpoints(text)
