"""The quality flags in the SR: coded qualitative evaluations, the summaries as text."""

from __future__ import annotations

from pathlib import Path

import highdicom as hd
import pydicom
import pytest
import SimpleITK as sitk
from pydicom.dataset import Dataset

from segnode.pipeline.outputs import codes
from segnode.pipeline.quality.record import CHECK_TITLES, QaCheck, QaFlag, QualityReport
from segnode.vocabulary import Role
from tests.pipeline.outputs.dicom_checks import (
    T1cCase,
    Written,
    dciodvfy,
    unexpected_warnings,
    write_with_quality,
)
from tests.pipeline.outputs.sr_reading import read_sr, region_groups

FLAGGED = QualityReport(
    flags=(
        QaFlag(
            check=QaCheck.MOTION,
            summary="FLAIR is 16.2 mm / 3.1° from the T1c (limit 2.0 mm / 2.0°)",
            role=Role.FLAIR,
        ),
        # 19 characters: more than a Code Value holds (SH, 16), so a Long Code Value.
        QaFlag(check=QaCheck.WEAK_IDENTIFICATION, summary="T2 identified from its words only"),
    ),
    checked=(QaCheck.MOTION, QaCheck.WEAK_IDENTIFICATION, QaCheck.SLICE_THICKNESS),
)


@pytest.fixture(scope="module")
def flagged_sr(
    t1c: T1cCase, labels: sitk.Image, tmp_path_factory: pytest.TempPathFactory
) -> Written:
    return write_with_quality(t1c, labels, tmp_path_factory.mktemp("flagged_sr"), ["sr"], FLAGGED)


def evaluations(path: Path) -> list[Dataset]:
    sr = pydicom.dcmread(path)
    (container,) = [
        item
        for item in sr.ContentSequence
        if item.ConceptNameCodeSequence[0].CodeValue == codes.QUALITATIVE_EVALUATIONS.value
    ]
    assert container.ValueType == "CONTAINER"
    assert container.RelationshipType == "CONTAINS"
    return list(container.ContentSequence)


def concept(item: Dataset) -> tuple[str, str]:
    name = item.ConceptNameCodeSequence[0]
    return (str(name.get("CodeValue") or name.LongCodeValue), str(name.CodingSchemeDesignator))


def value_of(item: Dataset) -> object:
    if item.ValueType == "CODE":
        code = item.ConceptCodeSequence[0]
        return (str(code.CodeValue), str(code.CodingSchemeDesignator))
    return str(item.TextValue)


def test_each_raised_flag_is_coded_with_its_summary(flagged_sr: Written) -> None:
    (obj,) = flagged_sr.record.of_kind("sr")
    items = [(item.ValueType, concept(item), value_of(item)) for item in evaluations(obj.path)]
    private = codes.PRIVATE_SCHEME
    assert items == [
        ("CODE", ("review", private), ("373066001", "SCT")),  # Yes
        ("TEXT", ("qa_summary", private), "REVIEW RECOMMENDED: 2 quality flags"),
        ("CODE", ("motion", private), ("52101004", "SCT")),  # Present
        ("TEXT", ("motion", private), FLAGGED.flags[0].summary),
        ("CODE", ("weak_identification", private), ("52101004", "SCT")),
        ("TEXT", ("weak_identification", private), FLAGGED.flags[1].summary),
    ]
    weak = evaluations(obj.path)[4].ConceptNameCodeSequence[0]
    assert "CodeValue" not in weak and weak.LongCodeValue == "weak_identification"
    assert weak.CodeMeaning == CHECK_TITLES[QaCheck.WEAK_IDENTIFICATION]


def test_flagged_sr_is_valid_and_carries_the_degree_sign(flagged_sr: Written) -> None:
    (obj,) = flagged_sr.record.of_kind("sr")
    validation = dciodvfy(obj.path)
    assert validation.errors == []
    assert unexpected_warnings(validation) == []
    sr = pydicom.dcmread(obj.path)
    assert sr.SpecificCharacterSet == "ISO_IR 192"  # "°" needs more than ASCII
    # highdicom reads it, and the measurements are untouched by the evaluations.
    assert len(region_groups(read_sr(flagged_sr))) == 5
    assert isinstance(hd.sr.srread(obj.path).content, hd.sr.MeasurementReport)


def test_no_flag_gives_review_no_and_nothing_else(written: Written) -> None:
    (obj,) = written.record.of_kind("sr")
    items = [(item.ValueType, concept(item), value_of(item)) for item in evaluations(obj.path)]
    assert items == [
        ("CODE", ("review", codes.PRIVATE_SCHEME), ("373067005", "SCT")),  # No
        ("TEXT", ("qa_summary", codes.PRIVATE_SCHEME), "No quality flag raised (0 checks)"),
    ]
    # ASCII only: the source's character set is kept.
    source = pydicom.dcmread(written.record.of_kind("seg")[0].path, stop_before_pixels=True)
    assert pydicom.dcmread(obj.path).get("SpecificCharacterSet") == source.get(
        "SpecificCharacterSet"
    )
