"""Ingest throughput: `segnode serve` versus DCMTK storescp, same data, same run.

Four DCMTK storescu processes send four different studies in parallel (the
issue's target: at least 0.5x storescp's throughput with 4 parallel senders).
The studies are derived from real scanner series in ../shared/data/dicom: each
series is copied with new Study/Series/SOP Instance UIDs (synthetic copies,
because the shared data has too few instances for a throughput run), so every
receiver gets new instances and no duplicate shortcut applies.

Receivers, each started fresh on an empty folder on the same disk:
  storescp            DCMTK, one process (associations served one at a time)
  storescp --fork     DCMTK, one process per association
  segnode             the node, defaults (fsync + SQLite synchronous=FULL)
  segnode no-fsync    the node with storage.fsync=false, sqlite_synchronous=NORMAL

Run:  .venv/bin/python bench/ingest.py [--copies N]
Prints instances/s and MB/s per receiver and the ratio node / storescp.

Listener scale-out (issue 15): ``--processes 1,2,4`` runs only the node, with
``listener.processes`` = each value (SO_REUSEPORT), on SQLite and, with
``--postgres URL``, on PostgreSQL too (a fresh schema per run), and prints the
speed-up over one process.
"""

from __future__ import annotations

import argparse
import os
import platform
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
from datetime import UTC, datetime
from pathlib import Path

import pydicom
from pydicom.uid import generate_uid

REPO = Path(__file__).resolve().parent.parent
DATA = REPO.parent / "shared" / "data" / "dicom"
SOURCES = [
    "philips_ingenia_elitionx_3T_sag3D_MPRAGE_classic",
    "ge_mr750_3T_axial_EPI_human",
    "siemens_prisma_E11_t1_fl2d_sag_HFS",
    "siemens_prisma_E11_t1_fl2d_sag_HFDL",
]
ENV = {**os.environ, "TCP_NODELAY": "1"}


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_for_port(port: int, timeout_s: float = 30) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        with socket.socket() as sock:
            if sock.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.05)
    raise TimeoutError(f"port {port} never opened")


def make_studies(workdir: Path, copies: int) -> list[Path]:
    """One folder per sender: ``copies`` UID-renamed copies of one real series."""
    folders = []
    for index, name in enumerate(SOURCES):
        folder = workdir / f"sender{index}"
        folder.mkdir(parents=True)
        files = sorted((DATA / name).iterdir())
        for copy in range(copies):
            study, series = generate_uid(), generate_uid()
            for number, path in enumerate(files):
                dataset = pydicom.dcmread(path)
                dataset.StudyInstanceUID, dataset.SeriesInstanceUID = study, series
                dataset.SOPInstanceUID = generate_uid()
                dataset.file_meta.MediaStorageSOPInstanceUID = dataset.SOPInstanceUID
                dataset.save_as(folder / f"{copy:03d}_{number:04d}.dcm")
        folders.append(folder)
    return folders


def send_in_parallel(port: int, folders: list[Path], called: str) -> float:
    """Seconds until every sender has finished; raises if any sender failed."""
    failures: list[str] = []

    def send(folder: Path) -> None:
        result = subprocess.run(
            ["storescu", "-aec", called, "-aet", f"BENCH{folder.name[-1]}", "+sd", "127.0.0.1",
             str(port), str(folder)],
            capture_output=True, text=True, env=ENV,
        )
        if result.returncode != 0:
            failures.append(result.stderr[-500:])

    threads = [threading.Thread(target=send, args=(folder,)) for folder in folders]
    start = time.perf_counter()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    elapsed = time.perf_counter() - start
    if failures:
        raise RuntimeError("a sender failed: " + failures[0])
    return elapsed


def run_storescp(folders: list[Path], workdir: Path, fork: bool) -> float:
    out = workdir / ("storescp_fork" if fork else "storescp")
    out.mkdir()
    port = free_port()
    command = ["storescp", "-aet", "SEGNODE", "+xa", "-od", str(out), *(["--fork"] if fork else []), str(port)]
    process = subprocess.Popen(command, env=ENV, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_for_port(port)
        return send_in_parallel(port, folders, "SEGNODE")
    finally:
        process.terminate()
        process.wait()


def run_segnode(
    folders: list[Path], workdir: Path, fsync: bool, processes: int = 1, database_url: str = ""
) -> float:
    name = f"segnode_{'fsync' if fsync else 'nofsync'}_{processes}_{'pg' if database_url else 'sqlite'}"
    data_dir = workdir / name
    config = workdir / f"{name}.toml"
    config.write_text(
        "[storage]\nmin_free_disk_mb = 1\n"
        f"fsync = {'true' if fsync else 'false'}\n"
        f"sqlite_synchronous = '{'FULL' if fsync else 'NORMAL'}'\n"
        f"database_url = '{database_url}'\n"
        f"[listener]\nprocesses = {processes}\nmax_associations = 16\n"
        "[jobs]\nenabled = false\n[web]\nenabled = false\n"
        "[logging]\nlevel = 'WARNING'\n"
    )
    port = free_port()
    process = subprocess.Popen(
        [sys.executable, "-m", "segnode.node.cli", "serve", "--config", str(config), "--data-dir",
         str(data_dir), "--port", str(port)],
        cwd=REPO, env=ENV, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    try:
        wait_for_port(port)
        time.sleep(3 if processes > 1 else 0)  # serve returns once every listener is bound; margin
        return send_in_parallel(port, folders, "SEGNODE")
    finally:
        process.terminate()
        process.wait()


def fresh_schema(postgres_url: str) -> str:
    """A new schema on ``postgres_url`` and the URL that uses it."""
    from sqlalchemy import create_engine, text

    schema = f"bench_{generate_uid()[-12:].replace('.', '')}"
    engine = create_engine(postgres_url, isolation_level="AUTOCOMMIT")
    with engine.connect() as connection:
        connection.execute(text(f'CREATE SCHEMA "{schema}"'))
    engine.dispose()
    return f"{postgres_url}?options=-csearch_path%3D{schema}"


def scaling(folders: list[Path], workdir: Path, counts: list[int], postgres_url: str,
            count: int, megabytes: float) -> None:
    backends = [("SQLite", "")] + ([("PostgreSQL", postgres_url)] if postgres_url else [])
    print(f"{'database':<12}{'processes':>10}{'seconds':>9}{'inst/s':>9}{'MB/s':>8}{'speed-up':>10}")
    for label, url in backends:
        first = None
        for processes in counts:
            seconds = run_segnode(folders, workdir, True, processes, fresh_schema(url) if url else "")
            first = first or seconds
            print(f"{label:<12}{processes:>10}{seconds:>9.2f}{count / seconds:>9.0f}"
                  f"{megabytes / seconds:>8.1f}{first / seconds:>9.2f}x")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--copies", type=int, default=2, help="copies of each source series per sender")
    parser.add_argument("--processes", default="", help="listener scale-out only: e.g. 1,2,4")
    parser.add_argument("--postgres", default="", help="with --processes: also on this PostgreSQL")
    args = parser.parse_args()
    if shutil.which("storescu") is None:
        sys.exit("DCMTK is not installed (apt-get install dcmtk)")
    with tempfile.TemporaryDirectory() as tmp:
        workdir = Path(tmp)
        folders = make_studies(workdir / "studies", args.copies)
        files = [path for folder in folders for path in folder.iterdir()]
        count, megabytes = len(files), sum(path.stat().st_size for path in files) / 1e6
        print(f"# segnode ingest benchmark, {datetime.now(UTC):%Y-%m-%d %H:%M} UTC")
        print(f"# machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores, "
              f"Python {platform.python_version()}")
        print(f"# data: {count} instances, {megabytes:.1f} MB, 4 parallel storescu senders, TCP_NODELAY=1\n")
        if args.processes:
            counts = [int(value) for value in args.processes.split(",")]
            scaling(folders, workdir, counts, args.postgres, count, megabytes)
            return
        results = {
            "storescp": run_storescp(folders, workdir, fork=False),
            "storescp --fork": run_storescp(folders, workdir, fork=True),
            "segnode (fsync, FULL)": run_segnode(folders, workdir, fsync=True),
            "segnode (no fsync, NORMAL)": run_segnode(folders, workdir, fsync=False),
        }
        print(f"{'receiver':<28}{'seconds':>9}{'inst/s':>9}{'MB/s':>8}")
        for name, seconds in results.items():
            print(f"{name:<28}{seconds:>9.2f}{count / seconds:>9.0f}{megabytes / seconds:>8.1f}")
        best_storescp = min(results["storescp"], results["storescp --fork"])
        for name in ("segnode (fsync, FULL)", "segnode (no fsync, NORMAL)"):
            print(f"ratio {name} / fastest storescp: {best_storescp / results[name]:.2f}x "
                  f"(/ plain storescp: {results['storescp'] / results[name]:.2f}x)")


if __name__ == "__main__":
    main()
