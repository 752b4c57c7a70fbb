"""Planted patient identifiers never reach the node's logs, at any level but DEBUG's UIDs.

The instances are real scanner files whose patient attributes are replaced with
planted marker strings (synthetic PHI: the real data is anonymised already).
"""

from __future__ import annotations

from pathlib import Path

import pydicom

from tests.helpers import NodeProcess, free_port, require_shared_data, storescu, wait_for

PLANTED = {
    "PatientName": "PLANTEDNAME^ZZQX",
    "PatientID": "PLANTEDID4711",
    "PatientBirthDate": "19010203",
    "AccessionNumber": "PLANTEDACC99",
}


def test_planted_phi_is_not_logged(tmp_path: Path) -> None:
    sources = sorted((require_shared_data() / "siemens_prisma_E11_t1_fl2d_sag_HFS").iterdir())[:4]
    planted = []
    for index, path in enumerate(sources):
        dataset = pydicom.dcmread(path)
        for keyword, value in PLANTED.items():
            setattr(dataset, keyword, value)
        target = tmp_path / f"planted{index}.dcm"
        dataset.save_as(target)
        planted.append(target)
    broken = tmp_path / "planted_broken.dcm"
    dataset = pydicom.dcmread(sources[0])
    for keyword, value in PLANTED.items():
        setattr(dataset, keyword, value)
    del dataset.StudyInstanceUID
    dataset.SOPInstanceUID = "1.2.826.0.1.3680043.8.498.4242"
    dataset.save_as(broken)

    config = tmp_path / "node.toml"
    config.write_text(
        "[storage]\nmin_free_disk_mb = 1\n[completion]\ncheck_interval_s = 0.2\n"
        "[completion.profiles.default]\nseries_quiet_s = 0.5\nstudy_quiet_s = 0.5\n"
        "[logging]\nlevel = 'DEBUG'\n"
    )
    log = tmp_path / "node.log"
    node = NodeProcess(config, tmp_path / "data", free_port(), log).start()
    try:
        storescu(node.port, [*planted, broken], extra=("-nh",))
        wait_for(lambda: "study complete" in log.read_text(), 30, "the study to complete")
    finally:
        node.stop()
    text = log.read_text()
    assert "instance quarantined" in text and "association accepted" in text
    for value in PLANTED.values():
        assert value not in text, f"{value} leaked into the log"
    assert "ZZQX" not in text
