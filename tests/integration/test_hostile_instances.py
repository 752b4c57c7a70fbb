"""Malformed instances over the wire to a real ``segnode serve``: refused, kept, never logged.

Every variant of tests/fixtures/malformed.py (built from REAL scanner files; no
corrupt real data exists) goes to the running listener as its own C-STORE, with
its own command UIDs on its own presentation context. The statuses on the wire
must be the refusals expected, the controls must be stored, the listener must
keep serving, and the node's JSON log at DEBUG must not hold one canary value.
"""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path

from tests.fixtures.malformed import CANARY_STRINGS, send_over_the_wire, variants
from tests.helpers import NodeProcess, free_port, require_shared_data, storescu


def test_malformed_variants_over_the_wire_are_refused_and_never_logged(tmp_path: Path) -> None:
    cases = variants(require_shared_data().parent)
    config = tmp_path / "node.toml"
    config.write_text(
        "[listener]\nmax_instance_mb = 16\n[storage]\nmin_free_disk_mb = 1\n"
        "[jobs]\nenabled = false\n[logging]\nlevel = 'DEBUG'\nformat = 'json'\n"
    )
    log = tmp_path / "node.log"
    data_dir = tmp_path / "data"
    node = NodeProcess(config, data_dir, free_port(), log).start()
    try:
        statuses = send_over_the_wire(node.port, cases)
        # Still serving a legitimate sender afterwards.
        good = sorted((require_shared_data() / "philips_elitionx_phantom_T1W_FFE_classic").iterdir())[:2]
        assert storescu(node.port, good).returncode == 0
    finally:
        node.stop()

    problems = []
    sent = 0
    for case in cases:
        status = statuses.get(case.name)
        if status is None:
            continue  # not expressible over the wire (tested at the receiver)
        sent += 1
        if case.refused_with and status not in case.refused_with:
            problems.append(f"{case.name}: 0x{status:04X}")
        if not case.refused_with and status != 0:
            problems.append(f"{case.name}: 0x{status:04X}, expected stored")
    assert not problems, problems
    assert sent >= len(cases) - 3, f"only {sent} of {len(cases)} variants went over the wire"
    assert statuses["c_store_on_verification_context"] == 0x0122
    assert statuses["command_sop_class_not_the_context"] == 0x0122

    database = sqlite3.connect(data_dir / "segnode.db")
    refused = [case for case in cases if case.refused_with and statuses.get(case.name) is not None]
    quarantined = database.execute("SELECT count(*) FROM quarantine").fetchone()[0]
    assert quarantined >= len(refused)
    events = database.execute(
        "SELECT count(*) FROM node_events WHERE kind = 'instance_quarantined'"
    ).fetchone()[0]
    assert events == quarantined

    text = log.read_text()
    for line in text.splitlines():
        json.loads(line)  # JSON only, nothing raw on stderr
    assert "instance quarantined" in text
    for canary in CANARY_STRINGS:
        assert canary not in text, f"{canary} leaked into the log"


def test_serve_writes_nothing_others_can_read(tmp_path: Path) -> None:
    """Under a permissive umask, `segnode serve` leaves no file or folder readable by others."""
    import os
    import stat

    config = tmp_path / "node.toml"
    config.write_text("[storage]\nmin_free_disk_mb = 1\n[jobs]\nenabled = false\n")
    data_dir = tmp_path / "data"
    previous = os.umask(0o022)
    try:
        node = NodeProcess(config, data_dir, free_port(), tmp_path / "node.log").start()
    finally:
        os.umask(previous)
    try:
        good = sorted((require_shared_data() / "philips_elitionx_phantom_T1W_FFE_classic").iterdir())[:2]
        assert storescu(node.port, good).returncode == 0
        import pydicom

        broken = tmp_path / "broken.dcm"
        dataset = pydicom.dcmread(good[0])
        del dataset.StudyInstanceUID
        dataset.save_as(broken)
        storescu(node.port, [broken])
    finally:
        node.stop()
    paths = [data_dir, *data_dir.rglob("*")]
    assert any(path.suffix == ".dcm" and "quarantine" in path.parts for path in paths)
    assert any(path.name == "segnode.db" for path in paths)
    for path in paths:
        mode = stat.S_IMODE(path.stat().st_mode)
        assert mode & 0o077 == 0, f"{path.relative_to(tmp_path)} is {oct(mode)}"
