"""``tikv cluster start``: the embedded cluster in the foreground.

It delegates to ``tikv-mockstore serve`` (:mod:`tikv_mockstore.cli`), which prints
``PD listening on HOST:PORT`` once every server accepts connections and serves until
Ctrl-C (SIGINT) or SIGTERM.
"""

from __future__ import annotations

from typing import TextIO

from tikv_cli._format import UsageError

__all__ = ["serve_arguments", "start_cluster"]


def serve_arguments(
    *, host: str, pd_port: int, stores: int, regions: int | None, api_version: str
) -> list[str]:
    """The ``tikv-mockstore serve`` arguments for these options, checked first.

    Raises:
        UsageError: A value is out of range.

    """
    if not 0 <= pd_port < 65536:
        raise UsageError(f"--pd-port must be in [0, 65535], got {pd_port}")
    if stores < 1:
        raise UsageError(f"--stores must be at least 1, got {stores}")
    if regions is not None and not 1 <= regions <= 256:
        raise UsageError(f"--regions must be in [1, 256], got {regions}")
    version = api_version.upper()
    if version not in ("1", "V1", "2", "V2", "V1TTL"):
        raise UsageError(f"--api-version must be 1, V1TTL or 2, got {api_version!r}")
    argv = ["serve", "--host", host, "--pd-port", str(pd_port), "--stores", str(stores)]
    if regions is not None:
        argv += ["--regions", str(regions)]
    argv += ["--api-version", version]
    return argv


def start_cluster(
    *,
    host: str,
    pd_port: int,
    stores: int,
    regions: int | None,
    api_version: str,
    err: TextIO,
) -> int:
    """Run the embedded cluster until interrupted; returns the exit status."""
    argv = serve_arguments(
        host=host, pd_port=pd_port, stores=stores, regions=regions, api_version=api_version
    )
    from tikv_mockstore.cli import main as mockstore_main

    print("tikv: press Ctrl-C to stop the cluster", file=err, flush=True)
    return mockstore_main(argv)
