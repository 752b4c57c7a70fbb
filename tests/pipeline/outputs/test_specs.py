"""Specs refuse what DICOM cannot carry, on construction."""

from __future__ import annotations

import dataclasses

import pytest
from pydicom.sr.codedict import codes

from segnode.config.settings import ResultSeriesSettings
from segnode.pipeline.outputs import (
    AlgorithmProvenance,
    OutputSpecError,
    SegmentSpec,
    SeriesSpec,
)
from segnode.pipeline.outputs.provenance import LO_MAX_CHARS
from segnode.vocabulary import Region
from tests.pipeline.outputs.dicom_checks import PROVENANCE


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"model_sha256": "ABC"}, "64 lowercase hex"),
        ({"model_sha256": "G" * 64}, "64 lowercase hex"),
        ({"algorithm_name": " "}, "is empty"),
        ({"model_id": "x" * 1025}, "longer than 1024"),
        ({"model_version": "1\\2"}, "not a DICOM LO"),
        ({"model_version": "v" * (LO_MAX_CHARS + 1)}, "not a DICOM LO"),
        ({"algorithm_version": "9" * 50}, "no room for the model checksum"),
    ],
)
def test_provenance_refuses_values_dicom_cannot_carry(change: dict[str, str], message: str) -> None:
    with pytest.raises(OutputSpecError, match=message):
        dataclasses.replace(PROVENANCE, **change)


def test_provenance_labels_carry_the_model_and_its_checksum() -> None:
    assert PROVENANCE.version_label == "0.1.0 / segnode-reference-v1 1@3f3f3f3f3f3f"
    assert PROVENANCE.parameters["model_sha256"] == "3f" * 32
    assert PROVENANCE.intended_use == "NOT FOR CLINICAL USE"
    assert PROVENANCE.device_uid == AlgorithmProvenance(**dataclasses.asdict(PROVENANCE)).device_uid


def test_version_label_leaves_out_a_model_id_that_does_not_fit() -> None:
    ensemble = dataclasses.replace(PROVENANCE, model_id="+".join(["segnode-reference-v1"] * 3))
    assert ensemble.version_label == "0.1.0 / 1@3f3f3f3f3f3f"
    assert ensemble.parameters["model_id"] == ensemble.model_id
    assert len(dataclasses.replace(PROVENANCE, model_version="v" * 64).version_label) <= 64


def test_series_spec_from_settings() -> None:
    settings = ResultSeriesSettings(pdf_series_number=42, series_description="x" * 36)
    spec = SeriesSpec.for_kind(settings, "pdf")
    assert spec.series_number == 42
    assert spec.series_description == "x" * 36 + " PDF - not for clinical use"
    assert len(spec.series_description) <= 64
    with pytest.raises(OutputSpecError, match="must end with"):
        SeriesSpec(1, "segnode tumour", "segnode")
    with pytest.raises(OutputSpecError, match="series number"):
        SeriesSpec(0, "a - not for clinical use", "segnode")


def test_segment_spec_refuses_unions_and_bad_numbers() -> None:
    with pytest.raises(OutputSpecError, match="union"):
        SegmentSpec(1, Region.WT, "WT", codes.SCT.Neoplasm)
    with pytest.raises(OutputSpecError, match="not in 1..65535"):
        SegmentSpec(0, Region.NCR, "NCR", codes.SCT.Necrosis)
    with pytest.raises(OutputSpecError, match="AUTOMATED"):
        SegmentSpec(1, Region.NCR, "NCR", codes.SCT.Necrosis, algorithm_type="AUTOMATED")  # type: ignore[arg-type]
