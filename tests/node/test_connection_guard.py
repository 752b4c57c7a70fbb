"""The listener against hostile connections (issue 10, items 3 and 4), and listener TLS.

Attackers are raw sockets bound to other loopback addresses (127.0.0.2, ...), so
the per-address caps apply to them and not to the legitimate sender, which is
pynetdicom or DCMTK from 127.0.0.1. Timeouts are shortened in the settings so
every test takes a few seconds.
"""

from __future__ import annotations

import random
import socket
import ssl
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, SecondaryCaptureImageStorage, generate_uid
from pynetdicom import AE
from pynetdicom.association import Association
from pynetdicom.pdu import A_ASSOCIATE_RQ
from pynetdicom.pdu_primitives import (
    A_ASSOCIATE,
    ImplementationClassUIDNotification,
    MaximumLengthNotification,
)
from pynetdicom.presentation import build_context
from pynetdicom.sop_class import Verification  # type: ignore[attr-defined]
from sqlalchemy import select

from segnode.node.receiving.connection_guard import ConnectionState
from segnode.node.service import Node
from segnode.storage.models import NodeEvent
from tests.helpers import dcmtk_env, require_tool, wait_for
from tests.tls_certs import make_tls_certs

FAST = {"association_request_timeout_s": 1.0, "pdu_read_timeout_s": 1.0}


# -- peers ---------------------------------------------------------------------


def attacker(port: int, source: str) -> socket.socket:
    """A raw TCP connection to the node from loopback address ``source``."""
    return socket.create_connection(("127.0.0.1", port), timeout=5, source_address=(source, 0))


def seconds_until_closed(sock: socket.socket, limit_s: float) -> float:
    """How long until the node closes ``sock`` (reading and discarding what it sends)."""
    start = time.monotonic()
    try:
        while True:
            remaining = limit_s - (time.monotonic() - start)
            if remaining <= 0:
                raise TimeoutError
            sock.settimeout(remaining)
            if not sock.recv(65536):
                break
    except (ConnectionResetError, BrokenPipeError):
        pass
    except TimeoutError:
        pytest.fail(f"the node kept the connection open for more than {limit_s} s")
    return time.monotonic() - start


def is_open(sock: socket.socket) -> bool:
    """True while the node has not closed ``sock`` (non-blocking peek)."""
    sock.settimeout(0)
    try:
        return sock.recv(1, socket.MSG_PEEK) != b""
    except BlockingIOError:
        return True
    except OSError:
        return False


def association_request(called: str = "SEGNODE") -> bytes:
    """An encoded A-ASSOCIATE-RQ proposing Verification."""
    primitive = A_ASSOCIATE()
    primitive.application_context_name = "1.2.840.10008.3.1.1.1"
    primitive.calling_ae_title = "ATTACKER"
    primitive.called_ae_title = called
    context = build_context(Verification)
    context.context_id = 1
    primitive.presentation_context_definition_list = [context]
    length = MaximumLengthNotification()
    length.maximum_length_received = 16382
    implementation = ImplementationClassUIDNotification()
    implementation.implementation_class_uid = "1.2.826.0.1.3680043.9.9999.1"
    primitive.user_information = [length, implementation]
    pdu = A_ASSOCIATE_RQ()
    pdu.from_primitive(primitive)
    return bytes(pdu.encode())


def legit_ae() -> AE:
    ae = AE(ae_title="LEGIT")
    ae.add_requested_context(Verification)
    ae.add_requested_context(SecondaryCaptureImageStorage, ExplicitVRLittleEndian)
    ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = 5
    return ae


def associate(port: int, tls_args: tuple[ssl.SSLContext, str] | None = None) -> Association:
    return legit_ae().associate("127.0.0.1", port, ae_title="SEGNODE", tls_args=tls_args)


def echo(port: int, tls_args: tuple[ssl.SSLContext, str] | None = None) -> float:
    """Seconds for one legitimate association + C-ECHO + release; fails if it fails."""
    start = time.monotonic()
    assoc = associate(port, tls_args)
    assert assoc.is_established, "legitimate association was not accepted"
    status = assoc.send_c_echo()
    assoc.release()
    assert status and status.Status == 0x0000
    return time.monotonic() - start


def pending(node: Node) -> int:
    return node.scp.guard.counts()[ConnectionState.PENDING]


def vm_rss_kib() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise RuntimeError("no VmRSS in /proc/self/status")


@pytest.fixture
def sockets() -> Iterator[list[socket.socket]]:
    """Attacker sockets, all closed at teardown."""
    opened: list[socket.socket] = []
    yield opened
    for sock in opened:
        sock.close()


# -- malformed and slow input ------------------------------------------------------


def test_half_association_request_is_dropped_after_the_request_timeout(start, sockets) -> None:
    node = start(listener=FAST | {"pdu_read_timeout_s": 10.0})
    sock = attacker(node.scp.port, "127.0.0.2")
    sockets.append(sock)
    request = association_request()
    sock.sendall(request[: len(request) // 2])
    assert 0.5 < seconds_until_closed(sock, 3.0) < 2.5
    echo(node.scp.port)


def test_idle_connection_is_dropped_after_the_request_timeout(start, sockets) -> None:
    node = start(listener=FAST)
    sock = attacker(node.scp.port, "127.0.0.2")
    sockets.append(sock)
    assert 0.5 < seconds_until_closed(sock, 3.0) < 2.0
    wait_for(lambda: pending(node) == 0, 2.0, "the dropped connection to be released")


def test_slowloris_is_dropped_by_the_pdu_read_deadline(start, sockets) -> None:
    """One byte every 0.3 s: the association deadline is far away, the PDU's is not."""
    node = start(listener={"association_request_timeout_s": 30.0, "pdu_read_timeout_s": 1.0})
    sock = attacker(node.scp.port, "127.0.0.2")
    sockets.append(sock)
    request = association_request()
    stop = threading.Event()

    def drip() -> None:
        for byte in request:
            if stop.is_set():
                return
            try:
                sock.send(bytes([byte]))
            except OSError:
                return
            stop.wait(0.3)

    sender = threading.Thread(target=drip, daemon=True)
    sender.start()
    try:
        assert 0.7 < seconds_until_closed(sock, 4.0) < 2.5
    finally:
        stop.set()
        sender.join()


def test_unknown_pdu_type_is_closed_at_once(start, sockets) -> None:
    node = start(listener={"association_request_timeout_s": 30.0})
    sock = attacker(node.scp.port, "127.0.0.2")
    sockets.append(sock)
    sock.sendall(b"\x42\x00\x00\x00\x00\x10" + bytes(16))
    assert seconds_until_closed(sock, 2.0) < 0.5


def test_random_bytes_are_closed_at_once(start, sockets) -> None:
    node = start(listener={"association_request_timeout_s": 30.0})
    for seed in range(5):
        sock = attacker(node.scp.port, f"127.0.0.{2 + seed}")
        sockets.append(sock)
        sock.sendall(random.Random(seed).randbytes(4096))
        assert seconds_until_closed(sock, 2.0) < 0.5, f"seed {seed}"


def test_oversized_pdata_header_is_closed_before_the_bytes_arrive(start, sockets) -> None:
    """A P-DATA-TF declaring 256 MiB: refused on its header, nothing is buffered."""
    node = start(listener={"association_request_timeout_s": 30.0})
    rss_before = vm_rss_kib()
    sock = attacker(node.scp.port, "127.0.0.2")
    sockets.append(sock)
    sock.sendall(b"\x04\x00" + (256 * 1024 * 1024).to_bytes(4, "big"))
    sent = 0
    start_s = time.monotonic()
    chunk = bytes(1024 * 1024)
    sock.settimeout(2.0)
    with pytest.raises(OSError):  # broken pipe / reset once the node has closed
        while sent < 256 * 1024 * 1024:
            sent += sock.send(chunk)
    assert time.monotonic() - start_s < 1.0
    assert sent < 32 * 1024 * 1024, f"the node accepted {sent} bytes of the PDU"
    assert vm_rss_kib() - rss_before < 32 * 1024


def test_oversized_pdata_on_an_association_aborts_it(start) -> None:
    node = start()
    assoc = associate(node.scp.port)
    assert assoc.is_established
    raw = assoc.dul.socket.socket
    raw.sendall(b"\x04\x00" + (64 * 1024 * 1024).to_bytes(4, "big"))
    wait_for(lambda: assoc.is_aborted, 3.0, "the node to abort the association")
    echo(node.scp.port)


def test_slowloris_on_an_established_association_is_dropped(start) -> None:
    """After acceptance the PDU deadline still holds: half a P-DATA-TF, then one byte at a time."""
    node = start(listener={"pdu_read_timeout_s": 1.0, "network_timeout_s": 120.0})
    assoc = associate(node.scp.port)
    assert assoc.is_established
    raw = assoc.dul.socket.socket
    started = time.monotonic()
    raw.sendall(b"\x04\x00\x00\x00\x00\x40")  # a P-DATA-TF header declaring 64 bytes
    for _ in range(10):
        if assoc.is_aborted:
            break
        try:
            raw.send(b"\x00")
        except OSError:
            break
        time.sleep(0.3)
    wait_for(lambda: assoc.is_aborted or not assoc.is_established, 3.0, "the node to drop it")
    assert time.monotonic() - started < 3.5
    echo(node.scp.port)


def test_dataset_larger_than_max_instance_mb_aborts_the_association(start) -> None:
    node = start(listener={"max_instance_mb": 1})
    ds = Dataset()
    ds.SOPClassUID = SecondaryCaptureImageStorage
    ds.SOPInstanceUID = generate_uid()
    ds.add_new(0x7FE00010, "OB", bytes(3 * 1024 * 1024))
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    assoc = associate(node.scp.port)
    assert assoc.is_established
    status = assoc.send_c_store(ds)
    assert not status  # no response: aborted
    wait_for(lambda: assoc.is_aborted, 3.0, "the node to abort the association")


# -- caps and floods -------------------------------------------------------------------


def test_flood_from_one_address_does_not_lock_out_another(start, sockets) -> None:
    """max_pending + 8 idle sockets from 127.0.0.2: the pending cap holds 16, echo still works."""
    node = start(listener={"max_connections_per_address": 100, "association_request_timeout_s": 30.0})
    limit = node.settings.listener.max_pending_connections
    for _ in range(limit + 8):
        sockets.append(attacker(node.scp.port, "127.0.0.2"))
    wait_for(lambda: pending(node) == limit, 3.0, f"{limit} pending connections")
    wait_for(lambda: sum(map(is_open, sockets)) == limit, 3.0, "the surplus to be refused")
    assert echo(node.scp.port) < 1.0
    # The legitimate newcomer evicted one flood connection, no more.
    assert sum(map(is_open, sockets)) == limit - 1


def test_flood_from_several_addresses_does_not_lock_out_another(start, sockets) -> None:
    node = start(listener={"association_request_timeout_s": 30.0})
    for index in range(30):
        sockets.append(attacker(node.scp.port, f"127.0.0.{2 + index % 4}"))
    limit = node.settings.listener.max_pending_connections
    wait_for(lambda: pending(node) == limit, 3.0, f"{limit} pending connections")
    for _ in range(3):
        assert echo(node.scp.port) < 1.0


def test_per_address_cap(start, sockets) -> None:
    node = start(listener={"association_request_timeout_s": 30.0})
    cap = node.settings.listener.max_connections_per_address
    held = [attacker(node.scp.port, "127.0.0.3") for _ in range(cap)]
    sockets.extend(held)
    wait_for(lambda: pending(node) == cap, 3.0, f"{cap} pending connections")
    extra = attacker(node.scp.port, "127.0.0.3")
    sockets.append(extra)
    assert seconds_until_closed(extra, 2.0) < 0.5
    other = attacker(node.scp.port, "127.0.0.4")
    sockets.append(other)
    wait_for(lambda: pending(node) == cap + 1, 2.0, "a connection from another address")
    assert all(map(is_open, [*held, other]))


def test_association_limit_counts_accepted_associations_only(start, sockets) -> None:
    node = start(listener={"max_associations": 2, "association_request_timeout_s": 30.0})
    for _ in range(5):  # pending connections do not take association slots
        sockets.append(attacker(node.scp.port, "127.0.0.2"))
    wait_for(lambda: pending(node) == 5, 3.0, "5 pending connections")
    held = [associate(node.scp.port) for _ in range(2)]
    try:
        assert all(assoc.is_established for assoc in held)
        third = associate(node.scp.port)
        assert third.is_rejected
        answer = third.acceptor.primitive
        assert (answer.result, answer.result_source, answer.diagnostic) == (0x02, 0x03, 0x02)
    finally:
        for assoc in held:
            assoc.release()
    wait_for(
        lambda: node.scp.guard.counts()[ConnectionState.ASSOCIATED] == 0, 3.0, "slots released"
    )
    echo(node.scp.port)


def test_stop_closes_every_guarded_connection(start, sockets) -> None:
    node = start(listener={"association_request_timeout_s": 30.0})
    for index in range(4):
        sockets.append(attacker(node.scp.port, f"127.0.0.{2 + index}"))
    wait_for(lambda: pending(node) == 4, 3.0, "4 pending connections")
    node.scp.stop()
    for sock in sockets:
        seconds_until_closed(sock, 2.0)


# -- TLS ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class Certs:
    ca: Path
    server_cert: Path
    server_key: Path
    client_cert: Path
    client_key: Path

    def client_context(self) -> ssl.SSLContext:
        context = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=str(self.ca))
        context.load_cert_chain(str(self.client_cert), str(self.client_key))
        return context


@pytest.fixture(scope="module")
def certs(tmp_path_factory: pytest.TempPathFactory) -> Certs:
    """A throw-away CA, a server certificate for 127.0.0.1/localhost and a client certificate."""
    made = make_tls_certs(tmp_path_factory.mktemp("tls"))
    return Certs(made.ca_cert, made.server_cert, made.server_key, made.client_cert, made.client_key)


@pytest.fixture
def tls_node(start, certs: Certs) -> Callable[..., Node]:
    def launch(require_client_cert: bool = False, **listener: object) -> Node:
        tls = {"enabled": True, "cert_file": str(certs.server_cert), "key_file": str(certs.server_key),
               "ca_file": str(certs.ca), "require_client_cert": require_client_cert}
        return start(listener={"tls": tls, **listener})

    return launch


def tls_events(node: Node) -> list[NodeEvent]:
    with node.sessions() as session:
        return list(
            session.execute(select(NodeEvent).where(NodeEvent.kind == "tls_handshake_failed"))
            .scalars()
            .all()
        )


def test_tls_listener_accepts_pynetdicom_and_echoscu(tls_node, certs: Certs) -> None:
    node = tls_node(require_client_cert=True)
    echo(node.scp.port, (certs.client_context(), "localhost"))
    result = subprocess.run(
        [require_tool("echoscu"), "+tls", str(certs.client_key), str(certs.client_cert),
         "+cf", str(certs.ca), "-aec", "SEGNODE", "-aet", "DCMTKTLS", "-to", "5",
         "127.0.0.1", str(node.scp.port)],
        capture_output=True, text=True, env=dcmtk_env(), timeout=30,
    )
    assert result.returncode == 0, result.stderr


def test_slow_tls_client_does_not_block_another(tls_node, certs: Certs, sockets) -> None:
    node = tls_node(association_request_timeout_s=2.0)
    silent = attacker(node.scp.port, "127.0.0.2")  # TCP connected, no ClientHello
    sockets.append(silent)
    wait_for(lambda: pending(node) == 1, 2.0, "the silent connection to be admitted")
    assert echo(node.scp.port, (certs.client_context(), "localhost")) < 1.5
    assert is_open(silent)
    seconds_until_closed(silent, 3.0)
    wait_for(lambda: tls_events(node), 3.0, "the failed handshake to be recorded")
    [event] = tls_events(node)
    assert event.detail["address"] == "127.0.0.2"
    assert event.detail["reason"] == "TLS handshake failed: timeout"


def test_plain_dicom_against_the_tls_listener_fails_the_handshake(tls_node) -> None:
    node = tls_node()
    assoc = associate(node.scp.port)
    assert not assoc.is_established
    wait_for(lambda: tls_events(node), 3.0, "the failed handshake to be recorded")
    assert tls_events(node)[0].detail["address"] == "127.0.0.1"
