"""Hostile connections against `segnode serve` (issue 10, items 3 and 4).

50 attacker connections from five loopback addresses (127.0.0.2-6) against a node
started with the DEFAULT configuration (only data dir and port are set): a
quarter each send half an A-ASSOCIATE-RQ, drip one byte every 2 s (slowloris),
stay idle, or declare a 256 MiB P-DATA-TF PDU and start streaming it. Each
attacker reconnects as soon as the node closes it, so the pressure never lets up.

Meanwhile a legitimate sender on 127.0.0.1 runs, once a second, a C-ECHO
association and a C-STORE association of a real file (../shared/data/dicom).

Printed: per-second samples of the TCP connections the node holds open (from
/proc/net/tcp), attacker sockets open, legitimate latencies, the node's VmRSS;
then summaries before (no attack) and during the attack, and RSS before/after.

Run:  .venv/bin/python bench/hostile.py [--seconds 30]
"""

from __future__ import annotations

import argparse
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import pydicom
from pydicom.uid import generate_uid
from pynetdicom import AE
from pynetdicom.pdu import A_ASSOCIATE_RQ
from pynetdicom.pdu_primitives import A_ASSOCIATE, MaximumLengthNotification
from pynetdicom.presentation import build_context
from pynetdicom.sop_class import Verification

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from tests.helpers import free_port, wait_for_port  # noqa: E402

DATA = REPO.parent / "shared" / "data" / "dicom"
STORE_FILE = DATA / "philips_ingenia_elitionx_3T_sag3D_MPRAGE_classic"
ATTACK_ADDRESSES = [f"127.0.0.{n}" for n in range(2, 7)]
KINDS = ["half_rq", "slowloris", "idle", "big_pdata"]


def vm_rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def node_connections(port: int) -> int:
    """ESTABLISHED TCP connections whose local port is the node's (the node's side)."""
    count = 0
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            lines = Path(table).read_text().splitlines()[1:]
        except FileNotFoundError:
            continue
        for line in lines:
            fields = line.split()
            if int(fields[1].split(":")[1], 16) == port and fields[3] == "01":
                count += 1
    return count


def association_request() -> bytes:
    primitive = A_ASSOCIATE()
    primitive.application_context_name = "1.2.840.10008.3.1.1.1"
    primitive.calling_ae_title = "ATTACKER"
    primitive.called_ae_title = "SEGNODE"
    context = build_context(Verification)
    context.context_id = 1
    primitive.presentation_context_definition_list = [context]
    length = MaximumLengthNotification()
    length.maximum_length_received = 16382
    primitive.user_information = [length]
    pdu = A_ASSOCIATE_RQ()
    pdu.from_primitive(primitive)
    return bytes(pdu.encode())


class Attacker(threading.Thread):
    """One hostile connection slot, reconnecting whenever the node closes it."""

    open_now = 0
    connects = 0
    lock = threading.Lock()

    def __init__(self, port: int, source: str, kind: str, stop: threading.Event) -> None:
        super().__init__(daemon=True)
        self.port, self.source, self.kind, self.stop = port, source, kind, stop
        self.request = association_request()

    def run(self) -> None:
        while not self.stop.is_set():
            try:
                sock = socket.create_connection(("127.0.0.1", self.port), timeout=5,
                                                source_address=(self.source, 0))
            except OSError:
                self.stop.wait(0.2)
                continue
            with Attacker.lock:
                Attacker.open_now += 1
                Attacker.connects += 1
            try:
                self.attack(sock)
            except OSError:
                pass
            finally:
                sock.close()
                with Attacker.lock:
                    Attacker.open_now -= 1
            self.stop.wait(0.1)

    def attack(self, sock: socket.socket) -> None:
        if self.kind == "half_rq":
            sock.sendall(self.request[: len(self.request) // 2])
        elif self.kind == "big_pdata":
            sock.sendall(b"\x04\x00" + (256 * 1024 * 1024).to_bytes(4, "big"))
            chunk = bytes(1024 * 1024)
            for _ in range(256):
                sock.sendall(chunk)
        elif self.kind == "slowloris":
            for byte in self.request:
                sock.sendall(bytes([byte]))
                if self.stop.wait(2.0):
                    return
        # Then wait, idle, until the node closes the connection.
        sock.settimeout(1.0)
        while not self.stop.is_set():
            try:
                if not sock.recv(4096):
                    return
            except TimeoutError:
                continue


def legit_echo(port: int) -> float | None:
    ae = AE(ae_title="LEGIT")
    ae.add_requested_context(Verification)
    ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = 10
    start = time.perf_counter()
    assoc = ae.associate("127.0.0.1", port, ae_title="SEGNODE")
    if not assoc.is_established:
        return None
    status = assoc.send_c_echo()
    assoc.release()
    return time.perf_counter() - start if status and status.Status == 0 else None


def legit_store(port: int, path: Path) -> float | None:
    dataset = pydicom.dcmread(path)
    dataset.SOPInstanceUID = generate_uid()
    dataset.file_meta.MediaStorageSOPInstanceUID = dataset.SOPInstanceUID
    ae = AE(ae_title="LEGIT")
    ae.add_requested_context(dataset.SOPClassUID, dataset.file_meta.TransferSyntaxUID)
    ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = 10
    start = time.perf_counter()
    assoc = ae.associate("127.0.0.1", port, ae_title="SEGNODE")
    if not assoc.is_established:
        return None
    status = assoc.send_c_store(dataset)
    assoc.release()
    return time.perf_counter() - start if status and status.Status == 0 else None


def summary(values: list[float | None]) -> str:
    ok = [v * 1000 for v in values if v is not None]
    failed = len(values) - len(ok)
    if not ok:
        return f"all {failed} failed"
    return (f"n={len(values)} failed={failed} median={statistics.median(ok):.1f} ms "
            f"max={max(ok):.1f} ms")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=30.0, help="attack duration")
    parser.add_argument("--connections", type=int, default=50)
    args = parser.parse_args(argv)
    store_path = sorted(STORE_FILE.iterdir())[0]
    with tempfile.TemporaryDirectory(prefix="segnode-hostile-") as workdir:
        port = free_port()
        log = open(Path(workdir) / "node.log", "wb")
        node = subprocess.Popen(
            [sys.executable, "-m", "segnode.node.cli", "serve", "--data-dir", str(Path(workdir) / "data"),
             "--port", str(port)],
            cwd=REPO, env={**os.environ, "TCP_NODELAY": "1"}, stdout=log, stderr=log,
        )
        try:
            wait_for_port(port, timeout_s=60)
            time.sleep(1.0)
            rss_start = vm_rss_mib(node.pid)
            base_echo = [legit_echo(port) for _ in range(10)]
            base_store = [legit_store(port, store_path) for _ in range(10)]
            rss_before = vm_rss_mib(node.pid)

            stop = threading.Event()
            attackers = [
                Attacker(port, ATTACK_ADDRESSES[i % len(ATTACK_ADDRESSES)], KINDS[i % len(KINDS)], stop)
                for i in range(args.connections)
            ]
            for attacker in attackers:
                attacker.start()
            print(f"{'t_s':>5} {'node_conns':>10} {'attacker_open':>13} {'echo_ms':>8} "
                  f"{'store_ms':>8} {'rss_mib':>8}")
            echoes: list[float | None] = []
            stores: list[float | None] = []
            held: list[int] = []
            rss_peak = rss_before
            started = time.monotonic()
            while (elapsed := time.monotonic() - started) < args.seconds:
                tick = time.monotonic()
                echo_s = legit_echo(port)
                store_s = legit_store(port, store_path)
                echoes.append(echo_s)
                stores.append(store_s)
                conns = node_connections(port)
                held.append(conns)
                rss = vm_rss_mib(node.pid)
                rss_peak = max(rss_peak, rss)
                print(f"{elapsed:5.1f} {conns:10d} {Attacker.open_now:13d} "
                      f"{'FAIL' if echo_s is None else f'{echo_s * 1000:.1f}':>8} "
                      f"{'FAIL' if store_s is None else f'{store_s * 1000:.1f}':>8} {rss:8.1f}")
                time.sleep(max(0.0, 1.0 - (time.monotonic() - tick)))
            stop.set()
            for attacker in attackers:
                attacker.join(timeout=5)
            time.sleep(2.0)
            rss_after = vm_rss_mib(node.pid)
            print()
            print(f"attack: {args.connections} connections from {len(ATTACK_ADDRESSES)} addresses "
                  f"({', '.join(KINDS)}), {args.seconds:.0f} s, {Attacker.connects} TCP connects in all")
            print(f"node connections held during attack: median {statistics.median(held):.0f}, "
                  f"max {max(held)} (defaults: 8 per address, 16 pending, 10 associations)")
            print(f"C-ECHO  no attack: {summary(base_echo)}")
            print(f"C-ECHO  attack:    {summary(echoes)}")
            print(f"C-STORE no attack: {summary(base_store)}  ({store_path.stat().st_size // 1024} KiB file)")
            print(f"C-STORE attack:    {summary(stores)}")
            print(f"node VmRSS: start {rss_start:.1f} MiB, before attack {rss_before:.1f} MiB, "
                  f"peak {rss_peak:.1f} MiB, after {rss_after:.1f} MiB")
        finally:
            node.terminate()
            node.wait(timeout=30)
            log.close()


if __name__ == "__main__":
    main()
