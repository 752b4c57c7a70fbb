"""Sequence identification: physics first, words second, every decision recorded."""

from __future__ import annotations

import dataclasses
import json
import pickle

import pytest
from typer.testing import CliRunner

from segnode.config.settings import SelectionSettings
from segnode.node.cli import app
from segnode.node.cli.study_folder import read_study_folder
from segnode.pipeline.errors import SelectionError, SequencesMissingError
from segnode.pipeline.selection import identify_sequences, require_roles
from segnode.pipeline.sequence_facts import SequenceFacts, facts_from_attributes
from segnode.vocabulary import Role
from tests.helpers import require_shared_data

SETTINGS = SelectionSettings()


def series(
    uid: str,
    description: str,
    *,
    tr: float | None,
    te: float | None,
    ti: float | None = None,
    scanning: str = "SE",
    agent: str | None = None,
    acquisition: str = "2D",
    thickness: float = 5.0,
    images: int = 26,
    number: int = 1,
    time: str = "100000",
    image_type: str = "ORIGINAL\\PRIMARY\\M\\ND",
    echoes: int = 1,
) -> SequenceFacts:
    """Synthetic header facts: unit tests of the rules, each case one physical situation."""
    attributes = {
        "SeriesDescription": description,
        "Modality": "MR",
        "SOPClassUID": "1.2.840.10008.5.1.4.1.1.4",
        "ImageType": image_type.split("\\"),
        "ScanningSequence": scanning.split("\\"),
        "MRAcquisitionType": acquisition,
        "SliceThickness": str(thickness),
        "SeriesNumber": str(number),
        "SeriesTime": time,
    }
    for key, value in (
        ("RepetitionTime", tr),
        ("EchoTime", te),
        ("InversionTime", ti),
        ("ContrastBolusAgent", agent),
    ):
        if value is not None:
            attributes[key] = str(value)
    return facts_from_attributes(uid, attributes, images, echoes)


BRAIN_STUDY = [
    series("1", "localizer", tr=8, te=4, scanning="GR", images=3, number=1, time="100000"),
    series("2", "T1_AX_SE", tr=600, te=12, number=2, time="100100"),
    series("3", "MRHR_T2_AX_SE", tr=5000, te=95, number=3, time="100500"),
    series(
        "4",
        "MRHR_FLAIR_AX_SE_IR",
        tr=9000,
        te=120,
        ti=2500,
        scanning="SE\\IR",
        number=4,
        time="101000",
    ),
    series("5", "ep2d_diff_3scan_trace", tr=5000, te=90, scanning="EP", number=5, time="101500"),
    series("6", "MRHR_T1_AX_POST_GAD_SE", tr=600, te=12, agent="Gadovist", number=6, time="102000"),
]


def roles(assignment) -> dict[str, str]:  # noqa: ANN001
    return {
        role.value: candidate.facts.series_instance_uid
        for role, candidate in assignment.chosen.items()
    }


def test_a_typical_study_is_assigned_and_every_series_explained() -> None:
    assignment = identify_sequences(BRAIN_STUDY, SETTINGS)
    assert roles(assignment) == {"t1": "2", "t1c": "6", "t2": "3", "flair": "4"}
    record = assignment.as_record()
    by_uid = {c["series_instance_uid"]: c for c in record["candidates"]}
    assert "names a localizer" in by_uid["1"]["rejected"]
    assert "echo-planar" in by_uid["5"]["rejected"]
    assert any("ContrastBolusAgent 'Gadovist'" in r for r in by_uid["6"]["reasons"])
    assert any("inversion recovery with TI 2500" in r for r in by_uid["4"]["reasons"])
    json.dumps(record)  # JSON-serialisable for the job record


def test_physics_beats_a_misleading_description() -> None:
    study = [series("a", "T2 something", tr=550, te=10), series("b", "routine", tr=6000, te=100)]
    assignment = identify_sequences(study, SETTINGS)
    assert roles(assignment) == {"t1": "a", "t2": "b"}


def test_pre_overrides_a_contrast_word_and_order_splits_unknowns() -> None:
    study = [
        series("pre", "T1 pre gad", tr=500, te=10, time="100000"),
        series("x", "t1_se_tra", tr=500, te=10, time="100500"),
        series("post", "T1 +C", tr=500, te=10, time="101000"),
        series("late", "t1_se_cor", tr=500, te=10, time="101500"),
    ]
    assignment = identify_sequences(study, SETTINGS)
    by_uid = {c.facts.series_instance_uid: c.role for c in assignment.candidates}
    assert by_uid == {"pre": Role.T1, "x": Role.T1, "post": Role.T1C, "late": Role.T1C}


def test_no_contrast_evidence_never_invents_a_t1c() -> None:
    study = [
        series("a", "t1_se", tr=500, te=10, time="1"),
        series(
            "b",
            "t1_mprage",
            tr=2000,
            te=3,
            ti=900,
            scanning="GR\\IR",
            acquisition="3D",
            thickness=1.0,
            images=176,
            time="2",
        ),
    ]
    assignment = identify_sequences(study, SETTINGS)
    assert Role.T1C not in assignment.chosen
    assert roles(assignment)["t1"] == "b"  # the 3D thin one is preferred


def test_exclusions() -> None:
    cases = {
        "derived": series("d", "T1 MPR", tr=500, te=10, image_type="DERIVED\\SECONDARY\\MPR"),
        "multiecho": series("m", "t2 me", tr=3000, te=90, echoes=2),
        "pd": series("p", "PD", tr=3000, te=15),
        "perfusion": series("f", "ep2d_perf", tr=1500, te=30),
    }
    assignment = identify_sequences(list(cases.values()), SETTINGS)
    assert assignment.chosen == {}
    reasons = {c.facts.series_instance_uid: c.rejected for c in assignment.candidates}
    assert "derived" in reasons["d"] and "multi-echo" in reasons["m"]
    assert "proton density" in reasons["p"] and "diffusion, perfusion" in reasons["f"]


def test_missing_sequence_error_names_what_is_missing_and_found() -> None:
    assignment = identify_sequences(BRAIN_STUDY[:3], SETTINGS)
    with pytest.raises(SelectionError) as caught:
        require_roles(assignment)
    message = str(caught.value)
    assert message.startswith("missing T1C, FLAIR")
    assert "localizer: rejected" in message and "MRHR_T2_AX_SE: t2" in message


def test_missing_sequences_survive_the_trip_from_a_worker_process() -> None:
    """The job runner tells "not applicable" from a failure by the class and reads its fields,
    after the error was pickled back from the worker process."""
    assignment = identify_sequences(BRAIN_STUDY[:3], SETTINGS)
    with pytest.raises(SequencesMissingError) as caught:
        require_roles(assignment)
    back = pickle.loads(pickle.dumps(caught.value))
    assert isinstance(back, SequencesMissingError) and str(back) == str(caught.value)
    assert back.missing == ("t1c", "flair")
    assert [s["taken_as"] for s in back.series if s["taken_as"] == "t2"] == ["t2"]
    assert len(back.series) == len(assignment.candidates)


def test_site_override_of_contrast_words() -> None:
    custom = SelectionSettings(contrast_pattern=r"mitkm")
    study = [
        series("a", "t1 mitKM", tr=500, te=10),
        series("b", "t1 post", tr=500, te=10, time="1"),
    ]
    by_uid = {
        c.facts.series_instance_uid: c.role for c in identify_sequences(study, custom).candidates
    }
    assert by_uid["a"] is Role.T1C


def test_real_epi_and_dti_are_never_structural() -> None:
    data = require_shared_data()
    for name in (
        "ge_mr750_3T_axial_EPI_human",
        "toshiba_galan_DTI_one_slice",
        "siemens_trio_transfer_syntaxes",
    ):
        studies, _ = read_study_folder(data / name)
        for facts in studies.values():
            assignment = identify_sequences(facts, SETTINGS)
            assert assignment.chosen == {}, name


def test_real_structural_series_are_t1() -> None:
    data = require_shared_data()
    for name in (
        "philips_ingenia_elitionx_3T_sag3D_MPRAGE_classic",
        "siemens_prisma_XA30_T1w_tfl_enhanced_multiframe",
    ):
        [facts] = read_study_folder(data / name)[0].values()
        assert set(roles(identify_sequences(facts, SETTINGS))) == {"t1"}, name


def test_inspect_cli_json() -> None:
    folder = require_shared_data() / "philips_ingenia_elitionx_3T_sag3D_MPRAGE_classic"
    result = CliRunner().invoke(app, ["inspect", str(folder), "--json"])
    assert result.exit_code == 0, result.output
    [study] = json.loads(result.output)["studies"]
    assert study["roles"]["t1"]["series_description"] == "ADNI_Sag3D MPRAGE"
    assert study["missing"] == ["t1c", "t2", "flair"]
    assert study["candidates"][0]["chosen"] is True


def test_facts_are_frozen() -> None:
    with pytest.raises(dataclasses.FrozenInstanceError):
        BRAIN_STUDY[0].description = "x"  # type: ignore[misc]


def test_tcga_study_roles_are_identified(tcga_study) -> None:  # noqa: ANN001
    """The four real TCGA-FG-6692 sequences, written as a Siemens-style DICOM study."""
    folder = next(iter(tcga_study.values())).folder.parent
    [facts] = read_study_folder(folder)[0].values()
    assignment = identify_sequences(facts, SETTINGS)
    expected = {role: built.series_instance_uid for role, built in tcga_study.items()}
    assert roles(assignment) == expected
    require_roles(assignment)
