"""The job folder's typed records: round trips, the legacy JSON shape, clear errors, paths.

Why the legacy shape matters: job folders written before the records existed (a job that
is retried ``--from writing``, a resend) must read back, and tools that read the files
(audits, ``segnode jobs show``) must see the same keys. So each record is checked against
the literal JSON the old code wrote.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

from segnode.pipeline.errors import PipelineError
from segnode.pipeline.workspace import (
    InferenceRecord,
    Inputs,
    RegionVolumes,
    ResultObject,
    Results,
    SelectedSeries,
    Selection,
    SliceRecord,
    VolumeRecord,
    Workspace,
    WorkspaceError,
    jsonable,
)
from segnode.vocabulary import LabelConvention, Region, Role

SHA = "0123456789abcdef" * 4

LEGACY_INPUTS = {
    "study_instance_uid": "1.2.3",
    "series": [
        {"series_instance_uid": "1.2.3.1", "files": ["/store/a/1.dcm", "/store/a/2.dcm"]},
        {"series_instance_uid": "1.2.3.2", "files": ["/store/b/1.dcm"]},
    ],
}
LEGACY_SELECTION = {
    "roles": {
        role: {"series_instance_uid": f"1.2.3.{n}", "description": f"{role} axial", "files": [f"/s/{role}.dcm"]}
        for n, role in enumerate(("t1", "t1c", "t2", "flair"), start=1)
    },
    "record": {"roles": {"t1": {"series_instance_uid": "1.2.3.1"}}, "missing": [], "candidates": []},
}
LEGACY_INFERENCE = {
    "models": [{"id": "segnode-brats22-v1", "version": "1.0", "sha256": SHA}],
    "label_convention": "2021",
    "grid_label_voxels": {"0": 900, "1": 40, "2": 50, "4": 10},
    "postprocessing": {"threshold": 0.5, "et_min_voxels": None, "voxel_counts": {"et": 10}},
    "device": "cpu",
    "tta": False,
}
LEGACY_RESULTS = {
    "objects": [
        {
            "kind": kind,
            "path": f"/jobs/1/outputs/{kind}-1.dcm",
            "sop_class_uid": "1.2.840.10008.5.1.4.1.1.66.4",
            "sop_instance_uid": f"2.25.{n}",
            "series_instance_uid": f"2.25.{n}0",
        }
        for n, kind in enumerate(("seg", "sr"), start=1)
    ],
    "volumes": {
        "voxel_volume_mm3": 1.0,
        "WT": {"voxels": 100, "ml": 0.1},
        "TC": {"voxels": 50, "ml": 0.05},
        "ET": {"voxels": 10, "ml": 0.01},
        "NCR": {"voxels": 40, "ml": 0.04},
        "ED": {"voxels": 50, "ml": 0.05},
    },
    "provenance": {"algorithm_name": "segnode", "model_id": "segnode-brats22-v1", "model_sha256": SHA},
}


def legacy_write(path: Path, data: object) -> None:
    """What ``Workspace.write_json`` wrote before the records."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data, indent=2, default=str))


def test_every_path_is_in_the_job_folder_where_the_layout_says() -> None:
    workspace = Workspace(Path("/data/jobs/7"))
    names = {
        "inputs.json": workspace.inputs_path,
        "selection.json": workspace.selection_path,
        "volumes/t1c.mha": workspace.volume_path(Role.T1C),
        "volumes/flair.json": workspace.volume_record_path(Role.FLAIR),
        "preprocessed/channels.npz": workspace.channels_path,
        "preprocessed/grid.mha": workspace.grid_path,
        "preprocessed/to_reference.tfm": workspace.to_reference_path,
        "preprocessed/record.json": workspace.preprocessing_record_path,
        "inference/labels_source.mha": workspace.source_labels_path,
        "inference/record.json": workspace.inference_record_path,
        "outputs": workspace.outputs_dir,
        "results.json": workspace.results_path,
    }
    for name, path in names.items():
        assert path == Path("/data/jobs/7") / name
        assert workspace.name_of(path) == name


def test_inputs_round_trip_in_the_legacy_shape(tmp_path: Path) -> None:
    workspace = Workspace(tmp_path)
    inputs = Inputs.of(
        "1.2.3",
        {"1.2.3.2": [Path("/store/b/1.dcm")], "1.2.3.1": [Path("/store/a/2.dcm"), Path("/store/a/1.dcm")]},
    )
    workspace.write_inputs(inputs)
    assert json.loads(workspace.inputs_path.read_text()) == LEGACY_INPUTS  # sorted, as before
    assert workspace.read_inputs() == inputs
    assert inputs.series[0].files == (Path("/store/a/1.dcm"), Path("/store/a/2.dcm"))
    assert not list(tmp_path.glob(".partial-*"))  # written under a temporary name, renamed


def test_selection_round_trip_and_files_per_role(tmp_path: Path) -> None:
    workspace = Workspace(tmp_path)
    legacy_write(workspace.selection_path, LEGACY_SELECTION)
    selection = workspace.read_selection()
    assert selection.files(Role.T1C) == [Path("/s/t1c.dcm")]
    assert selection.series(Role.FLAIR).series_instance_uid == "1.2.3.4"
    assert selection.substitutes == {}  # a file from before stand-ins: none
    workspace.write_selection(selection)
    # Written back: the same values, plus the newer field at its default.
    assert json.loads(workspace.selection_path.read_text()) == {**LEGACY_SELECTION, "substitutes": {}}

    partial = Selection(
        roles={Role.T1: SelectedSeries(series_instance_uid="1", description="", files=())}, record={}
    )
    with pytest.raises(WorkspaceError, match="selection.json chose no series for the t1c role"):
        partial.files(Role.T1C)


def test_volume_record_round_trip(tmp_path: Path) -> None:
    workspace = Workspace(tmp_path)
    record = VolumeRecord(
        series_instance_uid="1.2.3.2",
        slices=(SliceRecord(sop_instance_uid="1.2.3.2.1", frame=1, position_mm=(-90.0, -120.5, 30.25)),),
        notes=("duplicate positions resolved",),
    )
    workspace.write_volume_record(Role.T1C, record)
    assert json.loads(workspace.volume_record_path(Role.T1C).read_text()) == {
        "series_instance_uid": "1.2.3.2",
        "slices": [{"sop_instance_uid": "1.2.3.2.1", "frame": 1, "position_mm": [-90.0, -120.5, 30.25]}],
        "notes": ["duplicate positions resolved"],
    }
    assert workspace.read_volume_record(Role.T1C) == record


def test_inference_record_reads_the_legacy_file_and_names_the_models(tmp_path: Path) -> None:
    workspace = Workspace(tmp_path)
    legacy_write(workspace.inference_record_path, LEGACY_INFERENCE)
    inference = workspace.read_inference()
    assert inference.label_convention is LabelConvention.BRATS_2021
    assert inference.label_convention.et_label == 4
    assert inference.grid_label_voxels == {0: 900, 1: 40, 2: 50, 4: 10}
    assert inference.ensemble_id == "segnode-brats22-v1" and inference.primary_model.sha256 == SHA
    assert inference.tta_agreement is None  # a file from before the agreement was measured
    assert inference.primary_model.backend == "pytorch"  # every model before the choice
    workspace.write_inference(inference)
    engine = {"backend": "pytorch", "backend_version": None, "export_sha256": None, "backend_reason": None}
    assert json.loads(workspace.inference_record_path.read_text()) == {
        **LEGACY_INFERENCE,
        "models": [{**model, **engine} for model in LEGACY_INFERENCE["models"]],
        "tta_agreement": None,
    }

    ensemble = inference.model_copy(
        update={"models": (*inference.models, inference.models[0].model_copy(update={"id": "other"}))}
    )
    assert ensemble.ensemble_id == "segnode-brats22-v1+other"


def test_results_round_trip_with_the_regions_beside_the_voxel_volume(tmp_path: Path) -> None:
    workspace = Workspace(tmp_path)
    legacy_write(workspace.results_path, LEGACY_RESULTS)
    results = workspace.read_results()
    assert results.volumes.voxel_volume_mm3 == 1.0
    assert results.volumes.regions[Region.WT].ml == 0.1 and len(results.volumes.regions) == 5
    assert [obj.path for obj in results.of_kinds({"sr"})] == [Path("/jobs/1/outputs/sr-1.dcm")]
    assert results.objects[0].sop_instance_uid == "2.25.1"
    workspace.write_results(results)
    assert json.loads(workspace.results_path.read_text()) == LEGACY_RESULTS

    built = Results(
        objects=(ResultObject(kind="pdf", path=Path("/x.dcm"), sop_class_uid="1", sop_instance_uid="2",
                              series_instance_uid="3"),),
        volumes=RegionVolumes(voxel_volume_mm3=0.5, regions={}),
        provenance={},
    )
    assert Results.from_json(built.to_json()) == built


def test_a_missing_file_names_itself_and_the_unfinished_step(tmp_path: Path) -> None:
    workspace = Workspace(tmp_path)
    with pytest.raises(WorkspaceError, match=r"inference/record\.json is missing .*has not finished"):
        workspace.read_inference()
    assert issubclass(WorkspaceError, PipelineError)  # permanent: the job fails, naming it


@pytest.mark.parametrize(
    ("read", "path", "text", "problem"),
    [
        (Workspace.read_results, "results.json", "{not json", "Invalid JSON"),
        (Workspace.read_results, "results.json", '{"objects": []}', "volumes: Field required"),
        (Workspace.read_inputs, "inputs.json", '{"study_instance_uid": "1", "series": [], "x": 1}',
         "x: Extra inputs are not permitted"),
    ],
)
def test_a_malformed_file_is_a_workspace_error_naming_the_file_and_the_place(
    tmp_path: Path, read: Callable[[Workspace], object], path: str, text: str, problem: str
) -> None:
    workspace = Workspace(tmp_path)
    (tmp_path / path).write_text(text)
    with pytest.raises(WorkspaceError) as caught:
        read(workspace)
    message = str(caught.value)
    assert message.startswith(f"{path} in the job folder {tmp_path} is malformed: ")
    assert problem in message


def test_a_malformed_record_does_not_quote_the_values(tmp_path: Path) -> None:
    """Descriptions and paths can carry what a site typed in; the error names places only."""
    workspace = Workspace(tmp_path)
    broken = json.loads(json.dumps(LEGACY_INFERENCE))
    broken["models"][0]["sha256"] = "PLANTED-NOT-A-CHECKSUM"
    broken["label_convention"] = "PLANTED-CONVENTION"
    legacy_write(workspace.inference_record_path, broken)
    with pytest.raises(WorkspaceError) as caught:
        workspace.read_inference()
    message = str(caught.value)
    assert "models.0.sha256" in message and "label_convention" in message
    assert "PLANTED" not in message


def test_records_are_validated_when_built_too() -> None:
    with pytest.raises(ValueError, match="at least 1 item"):
        InferenceRecord.model_validate({**LEGACY_INFERENCE, "models": []})
    with pytest.raises(ValueError, match="frozen"):
        setattr(Inputs.of("1", {}), "study_instance_uid", "2")  # noqa: B010 - mypy would refuse it


def test_free_form_records_keep_what_json_dumps_default_str_wrote(tmp_path: Path) -> None:
    workspace = Workspace(tmp_path)
    record = {"brain_volume_ml": np.float64(1234.5), "atlas": Path("/atlas.nii.gz"), "count": np.int64(3)}
    assert jsonable(record) == json.loads(json.dumps(record, default=str))
    workspace.write_preprocessing_record(record)
    assert workspace.read_preprocessing_record() == jsonable(record)
    workspace.preprocessing_record_path.write_text("[1, 2]")
    with pytest.raises(WorkspaceError, match="preprocessed/record.json .* not a JSON object"):
        workspace.read_preprocessing_record()


def test_pruning_keeps_the_records_and_the_label_map(tmp_path: Path) -> None:
    workspace = Workspace(tmp_path)
    kept = [workspace.volume_record_path(Role.T1), workspace.source_labels_path, workspace.results_path]
    pruned = [workspace.volume_path(Role.T1), workspace.volume_path(Role.T2), workspace.channels_path]
    for path in [*kept, *pruned]:
        workspace.write_file(path, lambda tmp: tmp.write_bytes(b"12345"))
    assert workspace.prune_intermediates() == 5 * len(pruned)
    assert all(path.is_file() for path in kept) and not any(path.exists() for path in pruned)


def test_a_malformed_quality_report_names_the_file_and_the_problem(tmp_path: Path) -> None:
    workspace = Workspace(tmp_path)
    workspace.quality_path.write_text('{"flags": [{"check": "no_such_check", "summary": "x"}]}')
    with pytest.raises(WorkspaceError, match=r"quality.json in the job folder .* is malformed: flags.0.check"):
        workspace.read_quality()
