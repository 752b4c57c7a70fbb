"""Shared test helpers: waiting, ports, DCMTK tools, the node as a subprocess.

Waiting follows mercure's ``wait_for``: a monotonic deadline and a TimeoutError
that says what was awaited, never a bare sleep.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

import pytest

REPO_ROOT = Path(__file__).resolve().parent.parent
#: The real scanner data (../shared/data next to the checkout). ``SEGNODE_SHARED_DATA`` points
#: elsewhere, e.g. at a missing folder to see what a bare machine's run skips (tests/conftest.py
#: ends such a run with a loud "NOT A FULL RUN" summary).
SHARED_DATA = Path(os.environ.get("SEGNODE_SHARED_DATA") or REPO_ROOT.parent / "shared" / "data")
DICOM_DATA = SHARED_DATA / "dicom"

#: A ``segnode serve`` configuration file for tests: completion within about 2 s of the
#: last instance (the TOML twin of tests/conftest.py's FAST_COMPLETION); append sections.
FAST_NODE_TOML = """
[storage]
min_free_disk_mb = 1
[completion]
check_interval_s = 0.2
[completion.profiles.default]
series_quiet_s = 1.0
study_quiet_s = 1.5
release_grace_s = 0.5
"""

T = TypeVar("T")

#: Skip reasons start with an upper-case label ("REAL DATA MISSING: ..."): tests/conftest.py
#: groups the run's skips by it and calls a run with such skips NOT a full run.
REAL_DATA_MISSING = "REAL DATA MISSING"
TOOL_MISSING = "TOOL MISSING"


def require_data(path: Path) -> Path:
    """``path`` (a file or folder under ../shared/data), or a loud skip when it is absent."""
    if not path.exists():
        pytest.skip(
            f"{REAL_DATA_MISSING}: {path} not found; these tests need ../shared/data "
            "(present on developer machines and CI; SEGNODE_SHARED_DATA points elsewhere)"
        )
    return path


def require_shared_data() -> Path:
    """The real scanner DICOM folders (../shared/data/dicom), or a loud skip."""
    return require_data(DICOM_DATA)


def require_tool(name: str) -> str:
    path = shutil.which(name)
    if path is None:
        pytest.skip(
            f"{TOOL_MISSING}: {name!r} is not installed; `scripts/test` installs it "
            "(apt-get install dcmtk orthanc dicom3tools)"
        )
    return path


def wait_for(predicate: Callable[[], T | None], timeout_s: float, what: str, interval_s: float = 0.05) -> T:
    deadline = time.monotonic() + timeout_s
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out after {timeout_s} s waiting for {what}")
        time.sleep(interval_s)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_for_port(port: int, timeout_s: float = 20.0) -> None:
    def is_open() -> bool:
        with socket.socket() as sock:
            sock.settimeout(0.2)
            return sock.connect_ex(("127.0.0.1", port)) == 0

    wait_for(is_open, timeout_s, f"port {port} to accept connections")


def dcmtk_env() -> dict[str, str]:
    # Without TCP_NODELAY the Debian DCMTK build is ~50x slower on loopback.
    return {**os.environ, "TCP_NODELAY": "1"}


def storescu(port: int, paths: list[Path], *, called: str = "SEGNODE", calling: str = "STORESCU",
             extra: tuple[str, ...] = ()) -> subprocess.CompletedProcess[str]:
    """Send files with DCMTK storescu (each file in its own transfer syntax, -R)."""
    command = [require_tool("storescu"), "-aec", called, "-aet", calling, "-R", "+sd", "-to", "20",
               "-ta", "20", "-td", "20", *extra, "127.0.0.1", str(port), *map(str, paths)]
    return subprocess.run(command, capture_output=True, text=True, env=dcmtk_env(), timeout=300)


class NodeProcess:
    """``segnode serve`` as a real subprocess (for kill -9 and restart tests)."""

    def __init__(
        self, config_path: Path, data_dir: Path, port: int, log_path: Path, web_port: int | None = None
    ) -> None:
        self.config_path, self.data_dir, self.port, self.log_path = config_path, data_dir, port, log_path
        self.web_port = web_port
        """The dashboard's port; None (the default) runs the node without its web server."""
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> NodeProcess:
        log = self.log_path.open("ab")
        self.process = subprocess.Popen(
            [sys.executable, "-m", "segnode.node.cli", "serve", "--config", str(self.config_path),
             "--data-dir", str(self.data_dir), "--port", str(self.port)],
            cwd=REPO_ROOT, stdout=log, stderr=log,
            env={
                **os.environ,
                **(
                    {"SEGNODE__WEB__ENABLED": "false"}
                    if self.web_port is None
                    else {"SEGNODE__WEB__PORT": str(self.web_port)}
                ),
            },
        )
        wait_for_port(self.port)
        return self

    def kill9(self) -> None:
        assert self.process is not None
        self.process.send_signal(signal.SIGKILL)
        self.process.wait(timeout=10)

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
