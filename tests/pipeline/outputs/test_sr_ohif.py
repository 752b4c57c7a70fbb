"""The SR against OHIF 3.13.2's reading rules (docs/ohif-sr-notes.md), transcribed.

Why a transcription: the browser check (tests/viewer) needs OHIF, Orthanc and Chromium;
these rules are the few lines of OHIF's SR extension and @cornerstonejs/adapters 5.6.8
that decide whether a measurement is listed, where it is drawn and what it is called,
so a change here that would break OHIF fails without a browser.
"""

from __future__ import annotations

import pydicom
import pytest
from pydicom.dataset import Dataset

from segnode.pipeline.outputs.regions import REGION_NAMES
from segnode.pipeline.outputs.sr import region_label
from segnode.vocabulary import ALL_REGIONS, Region
from tests.pipeline.outputs.dicom_checks import T1cCase, Written

VARIANTS = ["written", "written_empty"]
#: Tools OHIF 3.13.2 maps into its measurement service (measurementServiceMappingsFactory).
MAPPED_TOOLS = {"PlanarFreehandROI", "ArrowAnnotate"}
TRACKING_ID, TRACKING_UID, COMMENT = "112039", "112040", "121106"


def code_value(item: Dataset) -> str:
    return str(item.ConceptNameCodeSequence[0].CodeValue)


def merged_measurements(path: str) -> list[list[Dataset]]:
    """``_getMergedContentSequencesByTrackingUniqueIdentifiers``: groups merged by UID, in order."""
    sr = pydicom.dcmread(path)
    (imaging,) = [item for item in sr.ContentSequence if code_value(item) == "126010"]
    merged: dict[str, list[Dataset]] = {}
    for group in imaging.ContentSequence:
        assert code_value(group) == "125007"
        (uid,) = [item.UID for item in group.ContentSequence if code_value(item) == TRACKING_UID]
        if uid not in merged:
            merged[uid] = list(group.ContentSequence)
        else:
            merged[uid] += [i for i in group.ContentSequence if code_value(i) != TRACKING_UID]
    return list(merged.values())


def sr_path(written: Written) -> str:
    (obj,) = written.record.of_kind("sr")
    return str(obj.path)


@pytest.mark.parametrize("variant", VARIANTS)
def test_one_measurement_per_region_each_with_one_scoord(
    variant: str, request: pytest.FixtureRequest, t1c: T1cCase
) -> None:
    """OHIF takes coords[0] of each merged measurement; none may lack it (the loader throws)."""
    written: Written = request.getfixturevalue(variant)
    measurements = merged_measurements(sr_path(written))
    assert len(measurements) == len(ALL_REGIONS)
    source_uids = {ref.sop_instance_uid for ref in t1c.volume.slices}
    for content in measurements:
        # No top-level SCOORD: _processNonGeometricallyDefinedMeasurement reads the NUMs'.
        assert not [i for i in content if i.ValueType in ("SCOORD", "SCOORD3D")]
        scoords = [
            child
            for item in content
            if item.ValueType == "NUM"
            for child in item.get("ContentSequence", [])
            if child.ValueType == "SCOORD"
        ]
        assert len(scoords) == 1
        (image,) = scoords[0].ContentSequence
        assert image.ReferencedSOPSequence[0].ReferencedSOPInstanceUID in source_uids


@pytest.mark.parametrize("variant", VARIANTS)
def test_tracking_identifiers_make_it_rehydratable_and_wt_first(
    variant: str, request: pytest.FixtureRequest
) -> None:
    """isRehydratable: the first Tracking Identifier must name a mapped Cornerstone tool."""
    written: Written = request.getfixturevalue(variant)
    measurements = merged_measurements(sr_path(written))
    for region, content in zip(ALL_REGIONS, measurements, strict=True):  # SR opens on the first
        identifier = next(str(i.TextValue) for i in content if code_value(i) == TRACKING_ID)
        tag, tool, name = identifier.split(":", 2)
        assert tag == "Cornerstone3DTools@^0.1.0"
        assert tool in MAPPED_TOOLS
        assert name == REGION_NAMES[region]


@pytest.mark.parametrize("variant", VARIANTS)
def test_hydration_yields_one_labelled_annotation_per_region(
    variant: str, request: pytest.FixtureRequest
) -> None:
    """generateToolState, per group: the first NUM must hold the SCOORD; the Comment is the label.

    The volume group's first NUM has no SCOORD, so its adapter gives up ("No spatial
    coordinates group found") and the panel lists the display group alone.
    """
    written: Written = request.getfixturevalue(variant)
    sr = pydicom.dcmread(sr_path(written))
    (imaging,) = [item for item in sr.ContentSequence if code_value(item) == "126010"]
    labels = []
    for group in imaging.ContentSequence:
        first_num = next(i for i in group.ContentSequence if i.ValueType == "NUM")
        holds_scoord = any(c.ValueType == "SCOORD" for c in first_num.get("ContentSequence", []))
        comments = [i.TextValue for i in group.ContentSequence if code_value(i) == COMMENT]
        assert holds_scoord == bool(comments)  # exactly the display groups are listed
        labels += comments
    expected = [f"{REGION_NAMES[r]} " for r in ALL_REGIONS]
    assert [label[: len(start)] for label, start in zip(labels, expected, strict=True)] == expected
    assert all(label.endswith(" ml") or label.endswith("(none segmented)") for label in labels)


def test_labels_never_round_a_few_voxels_to_nothing() -> None:
    assert region_label(Region.ET, 12.3149) == "ET enhancing tumor 12.31 ml"
    assert region_label(Region.ET, 0.0045) == "ET enhancing tumor 0.0045 ml"
    assert region_label(Region.ET, 0.0) == "ET enhancing tumor 0 ml (none segmented)"
