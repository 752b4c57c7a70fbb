"""A private RabbitMQ broker for the distributed tests (Debian's ``rabbitmq-server``).

Why private and not the machine's RabbitMQ on 5672: the tests stop the broker for 30 s
mid-job and kill it, which must not touch a service others use; and a fresh node has no
queues or messages from earlier runs. It runs as root with its own home (Erlang cookie),
node name, ports and database folder, so stopping and starting it again (same folder) is
a real broker restart: durable queues and persistent messages come back from disk.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
import uuid
from pathlib import Path

import pytest

from tests.helpers import TOOL_MISSING, free_port

RABBITMQ_SERVER = Path("/usr/lib/rabbitmq/bin/rabbitmq-server")


def require_rabbitmq() -> Path:
    if not RABBITMQ_SERVER.is_file():
        pytest.skip(
            f"{TOOL_MISSING}: RabbitMQ is not installed ({RABBITMQ_SERVER}); `scripts/test` "
            "installs it (apt-get install rabbitmq-server)"
        )
    return RABBITMQ_SERVER


class Broker:
    """One RabbitMQ node on 127.0.0.1:``port``; :meth:`stop` kills it, :meth:`start` brings it back."""

    def __init__(self) -> None:
        require_rabbitmq()
        self.root = Path(tempfile.mkdtemp(prefix="segnode-rabbit-"))
        self.port = free_port()
        self.dist_port = free_port()
        self.node_name = f"segnode-{uuid.uuid4().hex[:8]}@localhost"
        (self.root / "home").mkdir()
        cookie = self.root / "home" / ".erlang.cookie"
        cookie.write_text(uuid.uuid4().hex)
        cookie.chmod(0o400)
        (self.root / "rabbitmq.conf").write_text(
            f"listeners.tcp.default = 127.0.0.1:{self.port}\n"
            "loopback_users.guest = true\n"
            "log.console = false\n"
            "log.file.level = warning\n"
        )
        (self.root / "enabled_plugins").write_text("[].\n")
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"amqp://guest:guest@127.0.0.1:{self.port}//"

    def _env(self) -> dict[str, str]:
        return {
            **os.environ,
            "HOME": str(self.root / "home"),
            "RABBITMQ_NODENAME": self.node_name,
            "RABBITMQ_NODE_IP_ADDRESS": "127.0.0.1",
            "RABBITMQ_NODE_PORT": str(self.port),
            "RABBITMQ_DIST_PORT": str(self.dist_port),
            "RABBITMQ_CONFIG_FILE": str(self.root / "rabbitmq.conf"),
            "RABBITMQ_ENABLED_PLUGINS_FILE": str(self.root / "enabled_plugins"),
            "RABBITMQ_MNESIA_BASE": str(self.root / "mnesia"),
            "RABBITMQ_LOG_BASE": str(self.root / "log"),
            "RABBITMQ_PID_FILE": str(self.root / "rabbit.pid"),
            "ERL_EPMD_ADDRESS": "127.0.0.1",
        }

    def start(self, timeout_s: float = 60.0) -> Broker:
        log = (self.root / "server.out").open("ab")
        self.process = subprocess.Popen(
            [str(RABBITMQ_SERVER)],
            env=self._env(),
            stdout=log,
            stderr=log,
            cwd=self.root,
            start_new_session=True,
        )
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(
                    f"rabbitmq-server exited ({self.process.returncode}); see {self.root}/server.out"
                )
            if self._answers():
                return self
            time.sleep(0.2)
        raise RuntimeError(f"rabbitmq-server did not answer within {timeout_s} s ({self.root})")

    def _answers(self) -> bool:
        """An AMQP handshake, not only an open port: the port opens before the broker boots."""
        try:
            with socket.create_connection(("127.0.0.1", self.port), timeout=1) as connection:
                connection.sendall(b"AMQP\x00\x00\x09\x01")
                return connection.recv(1) == b"\x01"  # a Connection.Start method frame
        except OSError:
            return False

    def stop(self) -> None:
        """Kill the broker (SIGKILL to its process group): the harshest outage."""
        if self.process is not None and self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait(timeout=30)
        self.process = None

    def remove(self) -> None:
        self.stop()
        shutil.rmtree(self.root, ignore_errors=True)
