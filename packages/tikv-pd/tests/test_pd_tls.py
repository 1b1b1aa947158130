"""TLS between the PD client and PD (certificates made with the openssl CLI)."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from tikv_pd.channels import channel_credentials, channel_options
from tikv_pd.config import Config, SecurityConfig
from tikv_pd.errors import PDError
from tikv_pd.pd_client import PDClient

sys.path.insert(0, str(Path(__file__).parent))
from _pd_fake import FakePDCluster


def make_certs(tmp: Path) -> dict[str, Path]:
    """A CA and a server certificate for 127.0.0.1, signed by it."""
    openssl = shutil.which("openssl")
    if openssl is None:
        pytest.skip("the openssl command is not available")

    def run(*args: str) -> None:
        subprocess.run([openssl, *args], cwd=tmp, check=True, capture_output=True)

    ec = ("-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes")
    run("req", "-x509", *ec, "-keyout", "ca.key", "-out", "ca.crt", "-days", "1",
        "-subj", "/CN=tikv-python-test-ca")  # fmt: skip
    run("req", *ec, "-keyout", "pd.key", "-out", "pd.csr", "-subj", "/CN=pd")
    (tmp / "ext.cnf").write_text("subjectAltName=IP:127.0.0.1,DNS:localhost\n")
    run("x509", "-req", "-in", "pd.csr", "-CA", "ca.crt", "-CAkey", "ca.key",
        "-CAcreateserial", "-out", "pd.crt", "-days", "1", "-extfile", "ext.cnf")  # fmt: skip
    return {name: tmp / f"{name}" for name in ("ca.crt", "pd.key", "pd.crt")}


async def test_tls_connection_and_plaintext_refusal(tmp_path: Path) -> None:
    certs = make_certs(tmp_path)
    key, cert = certs["pd.key"].read_bytes(), certs["pd.crt"].read_bytes()
    async with FakePDCluster(members=2, tls=(key, cert)) as cluster:
        cluster.set_regions([b"m"], stores=[1])
        secure = Config(pd_timeout=1.0, security=SecurityConfig(ca_path=str(certs["ca.crt"])))
        async with await PDClient.connect(cluster.endpoints, config=secure) as client:
            # Members report https URLs; the client keeps using TLS after discovery.
            assert client.leader == cluster.endpoints[0]
            assert (await client.get_timestamp()) > 0
            region = await client.get_region(b"z")
            assert region is not None and region.start_key == b"m"
        # Without the CA the handshake fails: no member answers.
        with pytest.raises(PDError, match="no PD endpoint answered"):
            await PDClient.connect(
                cluster.endpoints, config=Config(pd_timeout=0.5), connect_timeout=0.2
            )


def test_credentials_need_readable_files(tmp_path: Path) -> None:
    missing = SecurityConfig(ca_path=str(tmp_path / "nope.crt"))
    with pytest.raises(ValueError, match=r"nope\.crt"):
        channel_credentials(missing)
    with pytest.raises(ValueError, match="not configured"):
        channel_credentials(SecurityConfig())


def test_channel_options_follow_config() -> None:
    options = dict(channel_options(Config(grpc_keepalive_time=20.0, grpc_keepalive_timeout=1.5)))
    assert options["grpc.keepalive_time_ms"] == 20_000
    assert options["grpc.keepalive_timeout_ms"] == 1_500
    assert options["grpc.max_receive_message_length"] == -1
    assert options["grpc.enable_retries"] == 0
    defaults = dict(channel_options())
    assert defaults["grpc.keepalive_time_ms"] == 10_000
