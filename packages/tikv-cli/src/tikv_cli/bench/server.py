"""The benchmark target: an embedded cluster in its own process (``tikv-mockstore serve``).

A separate process, so the cluster and the measured client do not share a GIL, and its
process id is known, so the harness can read the server's CPU time around each window.
"""

from __future__ import annotations

import os
import selectors
import signal
import subprocess
import sys
import tempfile
import time
from types import TracebackType
from typing import Self

__all__ = ["ServerProcess"]


class ServerProcess:
    """``python -m tikv_mockstore.cli serve --pd-port 0 ...`` as a child process.

    Example:
        >>> with ServerProcess(stores=3, regions=8) as server:
        ...     server.endpoints, server.pid

    """

    def __init__(
        self,
        *,
        stores: int = 3,
        regions: int | None = 8,
        api_version: str = "V1",
        pin_cpu: int | None = None,
        start_timeout: float = 60.0,
    ) -> None:
        argv = [sys.executable, "-m", "tikv_mockstore.cli", "serve", "--pd-port", "0"]
        argv += ["--stores", str(stores), "--api-version", api_version]
        if regions is not None:
            argv += ["--regions", str(regions)]
        # stderr goes to a file: a pipe nobody reads could fill up and stall the server.
        self._stderr = tempfile.TemporaryFile(mode="w+", encoding="utf-8")  # noqa: SIM115
        self._proc = subprocess.Popen(
            argv,
            stdout=subprocess.PIPE,
            stderr=self._stderr,
            text=True,
            start_new_session=True,
        )
        if pin_cpu is not None and hasattr(os, "sched_setaffinity"):
            os.sched_setaffinity(self._proc.pid, {pin_cpu})
        try:
            self.endpoints = [self._wait_ready(start_timeout)]
        except BaseException:
            self.stop()
            raise

    def _wait_ready(self, timeout: float) -> str:
        assert self._proc.stdout is not None
        deadline = time.monotonic() + timeout
        with selectors.DefaultSelector() as sel:
            sel.register(self._proc.stdout, selectors.EVENT_READ)
            while time.monotonic() < deadline:
                if not sel.select(timeout=0.2):
                    if self._proc.poll() is not None:
                        break
                    continue
                line = self._proc.stdout.readline()
                if not line:
                    break
                if line.startswith("PD listening on "):
                    return line.removeprefix("PD listening on ").strip()
        err = ""
        if self._proc.poll() is not None:
            self._stderr.seek(0)
            err = self._stderr.read()[-2000:]
        raise RuntimeError(f"the embedded cluster did not start within {timeout} s: {err.strip()}")

    @property
    def pid(self) -> int:
        """The server process id."""
        return self._proc.pid

    def stop(self, timeout: float = 30.0) -> None:
        """Stop the server (SIGTERM, then SIGKILL after ``timeout``); idempotent."""
        if self._proc.poll() is None:
            self._proc.send_signal(signal.SIGTERM)
            try:
                self._proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self._proc.kill()
                self._proc.wait(10)
        if self._proc.stdout is not None:
            self._proc.stdout.close()
        self._stderr.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()
