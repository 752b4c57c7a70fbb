"""A second "host" for tests: a network namespace on a veth pair, loopback-range addresses.

Why: a worker on another machine reaches the node's PostgreSQL and broker over a network,
not over the node's loopback. ``ip netns`` gives a process its own network stack; the veth
pair joins it to this one as 127.42.N.1 (here) and 127.42.N.2 (there). Addresses stay in
127.0.0.0/8 as the test rules require: ``route_localnet`` lets the kernel route them on a
real interface, and a /24 route in the local table (longer than the loopback /8) sends
replies down the veth instead of to ``lo``. Services here listen on 127.0.0.1 only, so a
:class:`TcpRelay` on 127.42.N.1 forwards each port the far host needs. The namespace shares
the file system (as an NFS mount of the node's data folder would).
"""

from __future__ import annotations

import shutil
import socket
import subprocess
import threading
from collections.abc import Iterator
from contextlib import contextmanager, suppress

import pytest

from tests.helpers import TOOL_MISSING


def _ip(*args: str, namespace: str | None = None) -> None:
    command = ["ip", *args] if namespace is None else ["ip", "netns", "exec", namespace, "ip", *args]
    subprocess.run(command, check=True, capture_output=True, text=True)


def _sysctl(setting: str, namespace: str | None = None) -> None:
    command = ["sysctl", "-qw", setting]
    if namespace is not None:
        command = ["ip", "netns", "exec", namespace, *command]
    subprocess.run(command, check=True, capture_output=True, text=True)


class NetnsHost:
    """Namespace ``sgn<N>``: reachable as :attr:`far_address`, sees us as :attr:`near_address`."""

    def __init__(self, index: int) -> None:
        self.index = index
        self.name = f"sgn{index}"
        self.near_address = f"127.42.{index}.1"
        self.far_address = f"127.42.{index}.2"
        self._near_if, self._far_if = f"sgnh{index}", f"sgnf{index}"

    def create(self) -> NetnsHost:
        self.delete()
        subnet = f"127.42.{self.index}.0/24"
        _ip("netns", "add", self.name)
        _ip("link", "add", self._near_if, "type", "veth", "peer", "name", self._far_if)
        _ip("link", "set", self._far_if, "netns", self.name)
        _sysctl("net.ipv4.conf.all.route_localnet=1")
        _sysctl(f"net.ipv4.conf.{self._near_if}.route_localnet=1")
        _ip("addr", "add", f"{self.near_address}/32", "dev", self._near_if)
        _ip("link", "set", self._near_if, "up")
        _ip("route", "add", subnet, "dev", self._near_if, "table", "local")
        _sysctl("net.ipv4.conf.all.route_localnet=1", self.name)
        _sysctl(f"net.ipv4.conf.{self._far_if}.route_localnet=1", self.name)
        _ip("link", "set", "lo", "up", namespace=self.name)
        _ip("addr", "add", f"{self.far_address}/32", "dev", self._far_if, namespace=self.name)
        _ip("link", "set", self._far_if, "up", namespace=self.name)
        _ip("route", "add", subnet, "dev", self._far_if, "table", "local", namespace=self.name)
        return self

    def command(self, *argv: str) -> list[str]:
        """``argv`` run inside the namespace."""
        return ["ip", "netns", "exec", self.name, *argv]

    def delete(self) -> None:
        subprocess.run(["ip", "link", "del", self._near_if], capture_output=True)
        subprocess.run(["ip", "netns", "del", self.name], capture_output=True)


class TcpRelay:
    """Forwards connections to ``listen_host:port`` (any free port) on to ``target``."""

    def __init__(self, listen_host: str, target: tuple[str, int]) -> None:
        self.target = target
        self._server = socket.create_server((listen_host, 0))
        self.address: tuple[str, int] = self._server.getsockname()[:2]
        self._closed = threading.Event()
        threading.Thread(target=self._accept, daemon=True, name="tcp-relay").start()

    def _accept(self) -> None:
        while not self._closed.is_set():
            try:
                client, _ = self._server.accept()
            except OSError:
                return
            try:
                upstream = socket.create_connection(self.target, timeout=5)
            except OSError:
                client.close()
                continue
            upstream.settimeout(None)
            for source, sink in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pump, args=(source, sink), daemon=True).start()

    @staticmethod
    def _pump(source: socket.socket, sink: socket.socket) -> None:
        with suppress(OSError):
            while chunk := source.recv(65536):
                sink.sendall(chunk)
        with suppress(OSError):
            sink.shutdown(socket.SHUT_WR)

    def close(self) -> None:
        self._closed.set()
        self._server.close()


@contextmanager
def netns_host(index: int) -> Iterator[NetnsHost]:
    """A fresh namespace host, removed afterwards; a loud skip where namespaces can't be made."""
    if shutil.which("ip") is None:
        pytest.skip(f"{TOOL_MISSING}: 'ip' (iproute2) is not installed; `scripts/test` installs it")
    host = NetnsHost(index)
    try:
        host.create()
    except subprocess.CalledProcessError as exc:
        host.delete()
        pytest.skip(
            f"NETWORK NAMESPACES UNAVAILABLE: `{' '.join(exc.cmd)}` failed: {exc.stderr.strip()} "
            "(needs root and CAP_NET_ADMIN)"
        )
    try:
        yield host
    finally:
        host.delete()
