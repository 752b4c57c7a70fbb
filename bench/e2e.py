"""End-to-end turnaround: Orthanc sends a study, segnode returns the SEG to Orthanc.

The real setup of the end-to-end tests (tests/integration/test_end_to_end.py): Orthanc
(Debian package) as the PACS, ``segnode serve`` as a subprocess with the shipped reference
model, the TCGA-FG-6692 four-series study built from the real NIfTI. Orthanc pushes the
study (REST ``/modalities/{id}/store``); the node completes it, runs the job and sends SEG
and SR back. Reported, from the node's database and Orthanc:

  completion wait   last instance received -> job created (the configured quiet times)
  each step         its duration from the job's event log
  turnaround        job created -> SEG acknowledged by Orthanc (the C-STORE that delivered it)
  total             last instance received -> SEG acknowledged

Target (issue 5): turnaround under 2 minutes after completion on 2 CPU cores.

Run: .venv/bin/python bench/e2e.py [--tta | --no-tta] [--runs N] [--series-quiet S] [--study-quiet S]
     .venv/bin/python bench/e2e.py --defaults [--runs N]   (issue 13's measure, see main_defaults)
     .venv/bin/python bench/e2e.py --workers 1,2 [--studies N] --postgres URL   (issue 15)

``--workers``: the distributed executor (Celery on a private RabbitMQ, PostgreSQL) with
1, then 2, ``segnode worker`` processes (concurrency 1 each); ``--studies`` patients' studies
(the same images, new UIDs) are pushed from Orthanc at once and the time until the last
job is done gives the throughput in studies per hour. TTA off, as in the tests.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sqlite3
import sys
import tempfile
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

STEPS = ("selecting", "converting", "preprocessing", "inferring", "writing", "sending")


def _config(orthanc_port: int, tta: bool, series_quiet: float, study_quiet: float) -> str:
    return f"""
[storage]
min_free_disk_mb = 1
[completion]
check_interval_s = 0.2
[completion.profiles.default]
series_quiet_s = {series_quiet}
study_quiet_s = {study_quiet}
release_grace_s = {series_quiet}
[model]
tta = {str(tta).lower()}
[[delivery.destinations]]
name = "pacs"
ae_title = "ORTHANC"
host = "127.0.0.1"
port = {orthanc_port}
calling_ae = "SEGNODE"
send = ["seg", "sr"]
[jobs]
poll_interval_s = 0.2
[logging]
level = "WARNING"
"""


def _parse(value: str) -> datetime:
    parsed = datetime.fromisoformat(value)
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)


def _measure(data_dir: Path) -> dict[str, Any]:
    with sqlite3.connect(data_dir / "segnode.db") as db:
        last_received = _parse(db.execute("SELECT max(received_at) FROM instances").fetchone()[0])
        job_id, created = db.execute("SELECT id, created_at FROM jobs ORDER BY id LIMIT 1").fetchone()
        events = db.execute(
            "SELECT kind, at, duration_s, detail FROM job_events WHERE job_id = ? ORDER BY id", (job_id,)
        ).fetchall()
    created_at = _parse(created)
    steps = {}
    delivered_at = None
    for kind, at, duration, detail in events:
        record = json.loads(detail) if detail else {}
        if record.get("step") in STEPS and duration is not None:
            steps[record["step"]] = duration
        if kind == "delivered":
            delivered_at = _parse(at)
    if delivered_at is None:
        raise RuntimeError(f"job {job_id} delivered nothing: {[e[0] for e in events]}")
    return {
        "completion_wait_s": (created_at - last_received).total_seconds(),
        "steps_s": steps,
        "turnaround_s": (delivered_at - created_at).total_seconds(),
        "total_s": (delivered_at - last_received).total_seconds(),
    }


def run_once(tmp: Path, study_files: list[Path], args: argparse.Namespace) -> dict[str, Any]:
    from tests.helpers import NodeProcess, free_port, wait_for
    from tests.orthanc import Orthanc

    node_port = free_port()
    orthanc = Orthanc(tmp / "orthanc", modalities={"segnode": ["SEGNODE", "127.0.0.1", node_port]}).start()
    config = tmp / "node.toml"
    config.write_text(_config(orthanc.dicom_port, args.tta, args.series_quiet, args.study_quiet))
    data_dir = tmp / "data"
    node = NodeProcess(config, data_dir, node_port, tmp / "node.log").start()
    try:
        [study] = orthanc.upload(study_files)
        orthanc.post("/modalities/segnode/store", {"Resources": [study], "Synchronous": True})

        def seg_stored() -> bool:
            return any(s["MainDicomTags"].get("Modality") == "SEG" for s in orthanc.get(f"/studies/{study}/series"))

        wait_for(seg_stored, 900, "the SEG in Orthanc", interval_s=0.2)
        time.sleep(0.5)  # the delivered event commits right after Orthanc's acknowledgement
        return _measure(data_dir)
    finally:
        node.stop()
        orthanc.stop()


def _defaults_config(pacs_port: int) -> str:
    """The shipped configuration, plus the one destination a site adds: nothing else."""
    return f"""
[[delivery.destinations]]
name = "pacs"
ae_title = "DCMTK"
host = "127.0.0.1"
port = {pacs_port}
calling_ae = "SEGNODE"
"""


def run_defaults(tmp: Path, study_files: list[Path], extra_toml: str = "") -> dict[str, Any]:
    """Issue 13's measure: default configuration, a DCMTK storescp as the PACS, the study pushed
    by ``dcmsend`` in one association; from the end of that association to the SEG at the PACS."""
    import subprocess

    from tests.dcmtk_peers import Storescp
    from tests.helpers import NodeProcess, dcmtk_env, free_port, require_tool, wait_for

    node_port = free_port()
    pacs = Storescp(tmp / "pacs")
    config = tmp / "node.toml"
    config.write_text(extra_toml + "\n" + _defaults_config(pacs.port))
    data_dir = tmp / "data"
    node = NodeProcess(config, data_dir, node_port, tmp / "node.log").start()
    try:
        # An idle node, as a site's would be: its worker warm (torch, deepbet, the model and
        # its OpenVINO export loaded) when warm workers are on, as by default.
        log = tmp / "node.log"
        if "warm_workers = false" in extra_toml:
            time.sleep(5)
        else:
            wait_for(lambda: log.is_file() and "worker warm" in log.read_text(errors="replace"), 300,
                     "the node's warm worker", interval_s=0.2)
        subprocess.run(
            [require_tool("dcmsend"), "-aec", "SEGNODE", "-aet", "BENCH", "127.0.0.1", str(node_port),
             *map(str, study_files)],
            check=True, env=dcmtk_env(), capture_output=True, timeout=300,
        )
        released = time.monotonic()

        def seg_at_pacs() -> bool:
            # storescp names a file <modality>.<SOP Instance UID>; a Segmentation is "SG".
            return any(path.name.startswith(("SG.", "SEG.")) for path in pacs.folder.iterdir())

        wait_for(seg_at_pacs, 900, "the SEG at the PACS", interval_s=0.1)
        seconds = time.monotonic() - released
        time.sleep(0.5)
        figures = _measure(data_dir)
        figures["release_to_seg_s"] = seconds
        return figures
    finally:
        node.stop()
        pacs.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tta", action=argparse.BooleanOptionalAction, default=True,
                        help="test-time augmentation (the shipped default: on)")
    parser.add_argument("--runs", type=int, default=1)
    parser.add_argument("--series-quiet", type=float, default=5.0)
    parser.add_argument("--study-quiet", type=float, default=10.0)
    parser.add_argument("--defaults", action="store_true",
                        help="issue 13's measure: shipped configuration + one storescp destination, "
                             "dcmsend in one association; seconds from its release to the SEG at the PACS")
    parser.add_argument("--extra-toml", default="",
                        help="with --defaults: TOML put before the destination, e.g. to switch a "
                             "default off for a before/after comparison")
    parser.add_argument("--workers", default="", help="distributed throughput: e.g. 1,2")
    parser.add_argument("--studies", type=int, default=2, help="with --workers: studies pushed at once")
    parser.add_argument("--postgres", default="postgresql+psycopg://postgres@127.0.0.1:5432/postgres",
                        help="with --workers: the PostgreSQL to use (a fresh schema per run)")
    args = parser.parse_args()
    if args.workers:
        main_workers([int(v) for v in args.workers.split(",")], args.studies, args.postgres)
        return
    if args.defaults:
        main_defaults(args.runs, args.extra_toml)
        return
    _report(
        f"TTA {'on' if args.tta else 'off'}; quiet times series {args.series_quiet} s, study {args.study_quiet} s",
        args.runs,
        lambda tmp, files: run_once(tmp, files, args),
        (("turnaround", "turnaround_s"), ("total", "total_s")),
        "turnaround = job created -> SEG acknowledged by Orthanc (target < 120 s on 2 cores)",
    )


def run_workers(workers: int, studies: int, postgres_url: str) -> dict[str, float]:
    """Seconds from the first push to the last job done, with ``workers`` Celery workers."""
    import uuid

    from sqlalchemy import create_engine, text

    from tests.broker import Broker
    from tests.distributed.conftest import WorkerProcess, cluster_config
    from tests.fixtures.dicom_study import PatientTags, build_tcga_study
    from tests.helpers import NodeProcess, free_port, wait_for
    from tests.orthanc import Orthanc

    schema = f"bench_{uuid.uuid4().hex[:10]}"
    admin = create_engine(postgres_url, isolation_level="AUTOCOMMIT")
    with admin.connect() as connection:
        connection.execute(text(f'CREATE SCHEMA "{schema}"'))
    url = f"{postgres_url}?options=-csearch_path%3D{schema}"
    broker = Broker().start()
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        node_port = free_port()
        orthanc = Orthanc(tmp / "orthanc", modalities={"segnode": ["SEGNODE", "127.0.0.1", node_port]}).start()
        config = tmp / "cluster.toml"
        config.write_text(cluster_config(url, broker.url, orthanc.dicom_port).replace(
            'level = "INFO"', 'level = "WARNING"'))
        data_dir = tmp / "data"
        node = NodeProcess(config, data_dir, node_port, tmp / "node.log").start()
        started: list[WorkerProcess] = []
        engine = create_engine(url)
        try:
            for index in range(workers):
                command = [sys.executable, "-m", "segnode.node.cli", "worker", "--config", str(config),
                           "--data-dir", str(data_dir), "--name", f"w{index}"]
                started.append(WorkerProcess(f"w{index}", command, tmp / f"w{index}.log").start())
            ids = []
            for number in range(studies):
                built = build_tcga_study(tmp / f"study{number}", PatientTags(patient_id=f"BENCH{number}"),
                                         study_key=f"bench{number}")
                ids += orthanc.upload([p for s in built.values() for p in s.files])
            first = time.perf_counter()
            for orthanc_study in ids:
                orthanc.post("/modalities/segnode/store", {"Resources": [orthanc_study], "Synchronous": True})

            def all_done() -> bool | None:
                with engine.connect() as connection:
                    states = [row[0] for row in connection.execute(text("SELECT state FROM jobs"))]
                if "failed" in states:
                    raise RuntimeError(f"a job failed ({tmp}): {states}")
                return True if states.count("done") == studies else None

            wait_for(all_done, 1800, "every job done", interval_s=0.5)
            elapsed = time.perf_counter() - first
        finally:
            engine.dispose()
            for worker in started:
                worker.stop()
            node.stop()
            orthanc.stop()
            broker.remove()
            with admin.connect() as connection:
                connection.execute(text(f'DROP SCHEMA "{schema}" CASCADE'))
            admin.dispose()
    return {"seconds": elapsed, "per_hour": studies * 3600 / elapsed}


def main_workers(counts: list[int], studies: int, postgres_url: str) -> None:
    print(f"# segnode distributed throughput, {datetime.now(UTC):%Y-%m-%d %H:%M} UTC")
    print(f"# machine: {platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}; "
          f"{studies} studies pushed at once, TTA off, Celery + RabbitMQ + PostgreSQL\n")
    print(f"{'workers':>7} {'seconds':>9} {'studies/h':>10} {'speed-up':>9}")
    first = None
    for workers in counts:
        figures = run_workers(workers, studies, postgres_url)
        first = first or figures["seconds"]
        print(f"{workers:>7} {figures['seconds']:>9.1f} {figures['per_hour']:>10.1f} "
              f"{first / figures['seconds']:>8.2f}x", flush=True)


def main_defaults(runs: int, extra_toml: str = "") -> None:
    _report(
        "shipped configuration, one DCMTK storescp destination, dcmsend in one association"
        + (f"; extra: {extra_toml!r}" if extra_toml else ""),
        runs,
        lambda tmp, files: run_defaults(tmp, files, extra_toml),
        (("release->SEG", "release_to_seg_s"),),
        "release->SEG = the sender's association released -> the SEG file at the PACS",
    )


def _report(
    setup: str,
    runs: int,
    run: Callable[[Path, list[Path]], dict[str, Any]],
    columns: tuple[tuple[str, str], ...],
    legend: str,
) -> None:
    """Build the study once, run ``runs`` times, print one row per run: completion wait, the
    steps, then ``columns`` (title, key of ``run``'s figures)."""
    from tests.fixtures.dicom_study import build_tcga_study

    print(f"# segnode end-to-end benchmark, {datetime.now(UTC):%Y-%m-%d %H:%M} UTC")
    print(f"# machine: {platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}; {setup}")
    with tempfile.TemporaryDirectory() as built:
        series = build_tcga_study(Path(built))
        files = [path for s in series.values() for path in s.files]
        print(f"# study: TCGA-FG-6692 native, 4 series, {len(files)} instances\n")
        print(f"{'run':>3} {'completion':>10} " + " ".join(f"{s:>13}" for s in STEPS)
              + "".join(f" {title:>12}" for title, _ in columns))
        for number in range(1, runs + 1):
            with tempfile.TemporaryDirectory() as tmp:
                figures = run(Path(tmp), files)
            steps = figures["steps_s"]
            print(f"{number:>3} {figures['completion_wait_s']:>10.1f} "
                  + " ".join(f"{steps.get(s, float('nan')):>13.1f}" for s in STEPS)
                  + "".join(f" {figures[key]:>12.1f}" for _, key in columns))
    print(f"\nseconds; {legend}")


if __name__ == "__main__":
    main()
