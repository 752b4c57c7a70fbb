"""SEGs on the series registration moved against the T1c (``segnode.pipeline.series_labels``).

The slow half runs the real select, convert and preprocess steps on TCGA-FG-6692's native
series (whose T2 and FLAIR registration finds ~16 mm and 8-14° off the T1c), then the real
infer step with the network replaced by a synthetic label map, then the real write step.
Why synthetic labels: what is tested is where the labels land on each series, which does not
depend on what the network finds, and the network takes minutes on 2 cores
(tests/node/test_run_command.py runs it). Every SEG is read back from its DICOM file and its
voxels placed in patient coordinates from its own headers, independently of the code under
test.

The fast half checks the pure pieces on small synthetic images with known answers.
"""

from __future__ import annotations

import json
import math
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from decimal import Decimal
from pathlib import Path
from typing import Any

import highdicom as hd
import numpy as np
import pydicom
import pytest
import SimpleITK as sitk
from numpy.typing import NDArray
from pydantic import ValidationError
from pydicom.valuerep import format_number_as_ds

import segnode.pipeline.outputs.writer as writer_module
from segnode.config.settings import ResultSeriesSettings, Settings
from segnode.pipeline.conversion import convert_series
from segnode.pipeline.errors import PipelineError
from segnode.pipeline.outputs import OutputSpecError
from segnode.pipeline.outputs.writer import registered_series_spec
from segnode.pipeline.quality.record import SeriesMotion
from segnode.pipeline.registration import RigidResult
from segnode.pipeline.series_labels import (
    grid_label_image,
    labels_to_series,
    registered_series_decisions,
    registration_transform,
)
from segnode.pipeline.steps import StepSettings, run_step
from segnode.pipeline.workspace import Inputs, Workspace, WorkspaceError, jsonable
from segnode.pipeline.workspace_images import write_volume
from segnode.vocabulary import Role
from tests.fixtures.dicom_study import BuiltSeries
from tests.pipeline.outputs.dicom_checks import dciodvfy, unexpected_warnings

SHA = "5e" * 32

# -- fast: the pure pieces ----------------------------------------------------------------


def _euler(center: tuple[float, float, float], angles_deg: tuple[float, float, float],
           translation: tuple[float, float, float]) -> sitk.Euler3DTransform:
    return sitk.Euler3DTransform(center, *(math.radians(a) for a in angles_deg), translation)


def _record_of(**transforms: sitk.Euler3DTransform) -> dict[str, object]:
    """A preprocessing record as the preprocess step writes it (through JSON)."""
    registrations = {
        role: RigidResult(transform=t, metric_before=-0.5, metric_after=-0.7, iterations=9,
                          seconds=1.0).as_record()
        for role, t in transforms.items()
    }
    return json.loads(json.dumps(jsonable({"registration": registrations})))


def test_the_registration_rebuilt_from_the_record_maps_points_exactly_as_the_original() -> None:
    original = _euler((0.4, -17.8, 13.7), (4.6, -6.9, -10.6), (-6.48, -0.79, -14.43))
    rebuilt = registration_transform(_record_of(flair=original), Role.FLAIR)
    for point in [(0.0, 0.0, 0.0), (80.5, -99.25, 60.125), (-70.0, 40.0, -33.3)]:
        assert rebuilt.TransformPoint(point) == original.TransformPoint(point)


def test_a_record_without_the_roles_registration_is_a_workspace_error() -> None:
    record = _record_of(t2=_euler((0, 0, 0), (0, 0, 0), (1, 2, 3)))
    with pytest.raises(WorkspaceError, match="no Euler3D registration of the flair"):
        registration_transform(record, Role.FLAIR)
    record["registration"]["t2"]["transform"]["parameters"] = [0.0, 1.0]  # type: ignore[index]
    with pytest.raises(WorkspaceError, match="registration of the t2 is malformed"):
        registration_transform(record, Role.T2)


def _cube_grid() -> tuple[NDArray[np.uint8], sitk.Image]:
    """A 40 mm grid (1 mm voxels, LPS) with labels 1 in a 4 x 6 x 8 box at known voxels."""
    labels = np.zeros((40, 40, 40), dtype=np.uint8)
    labels[10:14, 20:26, 5:13] = 1
    grid = sitk.Image([40, 40, 40], sitk.sitkUInt8)
    grid.SetOrigin((-20.0, -20.0, -20.0))
    return labels, grid


def _centroid_mm(image: sitk.Image, label: int = 1) -> NDArray[np.float64]:
    indexes = np.argwhere(sitk.GetArrayFromImage(image) == label)[:, ::-1]  # (x, y, z)
    points = [image.TransformContinuousIndexToPhysicalPoint([float(v) for v in i]) for i in indexes]
    return np.mean(np.asarray(points), axis=0)


def test_labels_follow_the_registration_and_the_atlas_transform_exactly() -> None:
    """Synthetic, because the answer must be known exactly: whole-voxel moves keep every
    label voxel, so the box must reappear shifted by precisely the composed translation."""
    labels_xyz, grid = _cube_grid()
    grid_labels = grid_label_image(labels_xyz, grid)
    at_grid = _centroid_mm(grid_labels)
    series = sitk.Image([60, 60, 60], sitk.sitkInt16)  # another grid than the label map's
    series.SetOrigin((-31.0, -28.0, -25.0))
    registration = _euler((3.0, -2.0, 1.0), (0.0, 0.0, 0.0), (7.0, -4.0, 2.0))  # T1c -> series
    to_reference = sitk.TranslationTransform(3, (-3.0, 5.0, 1.0))  # grid -> T1c (an atlas)

    on_series = labels_to_series(grid_labels, to_reference, registration, series)
    assert on_series.GetSize() == series.GetSize() and on_series.GetOrigin() == series.GetOrigin()
    assert on_series.GetPixelID() == sitk.sitkUInt8
    assert int((sitk.GetArrayFromImage(on_series) == 1).sum()) == 4 * 6 * 8
    np.testing.assert_allclose(_centroid_mm(on_series), at_grid + (-3, 5, 1) + (7, -4, 2), atol=1e-9)

    identity = sitk.Euler3DTransform()
    same = labels_to_series(grid_labels, identity, identity, series)
    np.testing.assert_allclose(_centroid_mm(same), at_grid, atol=1e-9)


def test_a_rotated_series_gets_the_labels_rotated_about_the_registrations_centre() -> None:
    labels_xyz, grid = _cube_grid()
    grid_labels = grid_label_image(labels_xyz, grid)
    series = sitk.Image([60, 60, 60], sitk.sitkInt16)
    series.SetOrigin((-30.0, -30.0, -30.0))
    registration = _euler((1.0, 2.0, 0.0), (0.0, 0.0, 90.0), (0.0, 0.0, 0.0))  # quarter turn
    on_series = labels_to_series(grid_labels, sitk.Euler3DTransform(), registration, series)
    assert int((sitk.GetArrayFromImage(on_series) == 1).sum()) == 4 * 6 * 8
    np.testing.assert_allclose(
        _centroid_mm(on_series), registration.TransformPoint(tuple(_centroid_mm(grid_labels))),
        atol=1e-6,
    )


def test_a_label_map_of_another_shape_than_the_grid_is_refused() -> None:
    labels_xyz, grid = _cube_grid()
    with pytest.raises(PipelineError, match=r"label map shape \(40, 40, 39\) differs"):
        grid_label_image(labels_xyz[:, :, :39], grid)


def test_which_series_get_a_seg_of_their_own_and_why() -> None:
    settings = ResultSeriesSettings(
        registered_series_segs=[Role.FLAIR, Role.T2, Role.T1],
        registered_series_min_translation_mm=1.0,
        registered_series_min_rotation_deg=1.0,
    )
    motion = {
        Role.FLAIR: SeriesMotion(translation_mm=15.8, rotation_deg=13.7),
        Role.T2: SeriesMotion(translation_mm=0.4, rotation_deg=0.3),
        Role.T1: SeriesMotion(translation_mm=0.2, rotation_deg=1.0),  # at the limit: a SEG
    }
    decisions = registered_series_decisions(motion, settings)
    assert {role: d["seg"] for role, d in decisions.items()} == {
        Role.FLAIR: True, Role.T2: False, Role.T1: True,
    }
    assert decisions[Role.FLAIR]["why"] == "moved 15.8 mm / 13.7° (limits 1 mm / 1°)"
    assert decisions[Role.T2]["why"] == "moved 0.4 mm / 0.3° below 1 mm / 1°: the T1c's SEG serves"
    assert decisions[Role.T2]["translation_mm"] == 0.4

    stood_in = registered_series_decisions(motion, settings, {Role.T2: Role.FLAIR})
    assert stood_in[Role.T2] == {"seg": False, "why": "no t2 series: the flair stood in"}
    unregistered = registered_series_decisions({}, settings)
    assert not any(d["seg"] for d in unregistered.values())
    assert registered_series_decisions(motion, ResultSeriesSettings(registered_series_segs=[])) == {}


def test_the_registered_series_settings_are_validated() -> None:
    defaults = ResultSeriesSettings()
    assert defaults.registered_series_segs == [Role.FLAIR, Role.T2]
    assert (defaults.registered_series_min_translation_mm, defaults.registered_series_min_rotation_deg) == (1.0, 1.0)
    with pytest.raises(ValidationError, match="the T1c is the reference"):
        ResultSeriesSettings(registered_series_segs=[Role.T1C])
    with pytest.raises(ValidationError, match="each role may be listed once"):
        ResultSeriesSettings(registered_series_segs=[Role.FLAIR, Role.FLAIR])
    with pytest.raises(ValidationError, match="registered_series_segs"):
        ResultSeriesSettings(registered_series_segs=["dwi"])
    with pytest.raises(ValidationError, match="greater than or equal to 0"):
        ResultSeriesSettings(registered_series_min_translation_mm=-1)
    with pytest.raises(ValidationError, match="9903...9905 overlaps the SEG/SR/SC/PDF"):
        ResultSeriesSettings(registered_series_first_number=9903)
    ResultSeriesSettings(registered_series_first_number=9903, registered_series_segs=[])
    from_file = Settings.model_validate({"result_series": {"registered_series_segs": ["t2"]}})
    assert from_file.result_series.registered_series_segs == [Role.T2]


def test_each_registered_series_seg_is_numbered_and_described_by_its_role() -> None:
    settings = ResultSeriesSettings(series_description="segnode tumour", manufacturer="Lab")
    flair, t2, t1 = (registered_series_spec(settings, role) for role in (Role.FLAIR, Role.T2, Role.T1))
    assert (flair.series_number, t2.series_number, t1.series_number) == (9905, 9906, 9907)
    assert flair.series_description == "segnode tumour SEG on FLAIR - not for clinical use"
    assert t2.series_description == "segnode tumour SEG on T2 - not for clinical use"
    assert flair.manufacturer == "Lab"
    # The longest prefix allowed (36) is shortened to fit a LO, the series' name kept whole.
    longest = ResultSeriesSettings(series_description="segnode tumour research site A " + "x" * 5)
    described = registered_series_spec(longest, Role.FLAIR).series_description
    assert described == "segnode tumour research site SEG on FLAIR - not for clinical use"
    assert len(described) == 64
    assert registered_series_spec(longest, Role.T2).series_description == "segnode tumour research site A SEG on T2 - not for clinical use"
    with pytest.raises(OutputSpecError, match="no SEG series for the t1c"):
        registered_series_spec(settings, Role.T1C)


# -- slow: the real study through the steps -----------------------------------------------

#: Where the synthetic lesions sit, relative to the brain mask's centre (grid voxels, 1 mm):
#: off-centre, so a wrong rotation about the brain's centre would move them visibly.
LESION_A_OFFSET = (22, -12, 8)
LESION_B_OFFSET = (-28, 18, -6)


def _synthetic_grid_labels(brain_mask: NDArray[np.uint8]) -> NDArray[np.uint8]:
    """Two lesions inside the brain: A nested NCR (r 6 mm) / ET (12) / ED (22), B ET (4) / ED (9).

    BraTS 2021 labels (1 NCR, 2 ED, 4 ET), as the network writes them.
    """
    centre = np.argwhere(brain_mask > 0).mean(axis=0)
    x, y, z = np.ogrid[: brain_mask.shape[0], : brain_mask.shape[1], : brain_mask.shape[2]]

    def within(offset: tuple[int, int, int], radius_mm: float) -> NDArray[np.bool_]:
        cx, cy, cz = centre + offset
        return np.asarray((x - cx) ** 2 + (y - cy) ** 2 + ((z - cz) * 1.2) ** 2 < radius_mm**2)

    labels = np.zeros(brain_mask.shape, dtype=np.uint8)
    labels[within(LESION_A_OFFSET, 22)] = 2
    labels[within(LESION_A_OFFSET, 12)] = 4
    labels[within(LESION_A_OFFSET, 6)] = 1
    labels[within(LESION_B_OFFSET, 9)] = 2
    labels[within(LESION_B_OFFSET, 4)] = 4
    if np.any(labels[brain_mask == 0]):
        raise AssertionError("the synthetic lesions must lie inside the brain")
    return labels


@dataclass(frozen=True)
class MovedSeriesJob:
    """A job folder after the write step, and what went into it."""

    workspace: Workspace
    settings: StepSettings
    grid_labels: NDArray[np.uint8]
    write_record: dict[str, object]

    def copy(self, to: Path) -> Workspace:
        """The folder as the infer step left it (no outputs, no results), for another write."""
        shutil.copytree(
            self.workspace.root, to, ignore=shutil.ignore_patterns("outputs", "results.json")
        )
        return Workspace(to)


@pytest.fixture(scope="module")
def moved_series_job(
    tcga_study: dict[str, BuiltSeries], tmp_path_factory: pytest.TempPathFactory
) -> MovedSeriesJob:
    """Select, convert, preprocess for real; infer with a synthetic map; write (about 25 s)."""
    from segnode.pipeline.model.segmentation import SegmentationResult  # torch: slow lane only

    root = tmp_path_factory.mktemp("moved_series")
    workspace = Workspace(root / "job")
    workspace.write_inputs(
        Inputs.of(
            tcga_study["t1c"].study_instance_uid,
            {series.series_instance_uid: series.files for series in tcga_study.values()},
        )
    )
    settings = StepSettings.from_settings(
        Settings(storage={"data_dir": str(root / "data")}), ("seg", "sr")
    )
    for name in ("select", "convert", "preprocess"):
        run_step(name, workspace.root, settings)
    with np.load(workspace.channels_path) as arrays:
        grid_labels = _synthetic_grid_labels(arrays["brain_mask"])
    result = SegmentationResult(
        labels=grid_labels,
        models=({"id": "synthetic-labels", "version": "1", "sha256": SHA},),
        record={"postprocessing": {}, "device": "cpu", "tta": False},
    )
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr("segnode.pipeline.steps.infer.segment", lambda request: result)
        run_step("infer", workspace.root, settings)
    record = run_step("write", workspace.root, settings)
    return MovedSeriesJob(workspace, settings, grid_labels, record)


def segment_points_mm(path: Path) -> dict[int, NDArray[np.float64]]:
    """Every voxel of each segment of a BINARY SEG in patient coordinates, from its headers."""
    seg = pydicom.dcmread(path)
    shared = seg.SharedFunctionalGroupsSequence[0]
    orientation = np.asarray(shared.PlaneOrientationSequence[0].ImageOrientationPatient, dtype=float)
    row_spacing, column_spacing = (float(v) for v in shared.PixelMeasuresSequence[0].PixelSpacing)
    frames = seg.pixel_array.reshape(-1, int(seg.Rows), int(seg.Columns))
    found: dict[int, list[NDArray[np.float64]]] = {}
    for frame, item in zip(frames, seg.PerFrameFunctionalGroupsSequence, strict=True):
        number = int(item.SegmentIdentificationSequence[0].ReferencedSegmentNumber)
        position = np.asarray(item.PlanePositionSequence[0].ImagePositionPatient, dtype=float)
        rows, columns = np.nonzero(frame)
        found.setdefault(number, []).append(
            position
            + np.outer(columns * column_spacing, orientation[:3])
            + np.outer(rows * row_spacing, orientation[3:])
        )
    return {number: np.concatenate(parts) for number, parts in found.items()}


def _results(workspace: Workspace) -> dict[Role, Path]:
    """The SEG files in results.json by the series they lie on."""
    return {
        obj.source_role: obj.path for obj in workspace.read_results().objects if obj.kind == "seg"
    }


def _registration(workspace: Workspace, role: Role) -> sitk.Euler3DTransform:
    """T1c point -> series point, built here from the record's numbers (not by the code under test)."""
    record: Any = workspace.read_preprocessing_record()
    transform = record["registration"][role.value]["transform"]
    parameters, fixed = transform["parameters"], transform["fixed_parameters"]
    return sitk.Euler3DTransform(fixed[:3], *parameters[:3], parameters[3:])


def test_infer_keeps_the_grid_label_map(moved_series_job: MovedSeriesJob) -> None:
    workspace = moved_series_job.workspace
    kept = sitk.ReadImage(str(workspace.grid_labels_path))
    grid = sitk.ReadImage(str(workspace.grid_path))
    assert workspace.name_of(workspace.grid_labels_path) == "inference/labels_grid.mha"
    assert kept.GetSize() == grid.GetSize() and kept.GetOrigin() == grid.GetOrigin()
    assert kept.GetSpacing() == grid.GetSpacing() and kept.GetDirection() == grid.GetDirection()
    np.testing.assert_array_equal(
        sitk.GetArrayFromImage(kept).transpose(2, 1, 0), moved_series_job.grid_labels
    )


def test_moved_flair_and_t2_get_a_seg_on_their_own_instances(
    moved_series_job: MovedSeriesJob, tcga_study: dict[str, BuiltSeries]
) -> None:
    segs = _results(moved_series_job.workspace)
    assert set(segs) == {Role.T1C, Role.FLAIR, Role.T2}  # the T1 is not configured by default
    step: Any = moved_series_job.write_record  # the write step's record, as the event log gets it
    assert step["registered_series"]["flair"]["seg"] is True
    assert step["registered_series"]["flair"]["translation_mm"] > 10
    assert [o.get("source_role") for o in step["objects"]] == [None, None, "flair", "t2"]  # SEG, SR
    main = hd.seg.segread(segs[Role.T1C])
    for role, number, name in [(Role.FLAIR, 9905, "FLAIR"), (Role.T2, 9906, "T2")]:
        seg = hd.seg.segread(segs[role])
        built = tcga_study[role.value]
        source = pydicom.dcmread(built.files[0], stop_before_pixels=True)
        assert seg.SeriesDescription == f"segnode tumour SEG on {name} - not for clinical use"
        assert int(seg.SeriesNumber) == number
        assert seg.StudyInstanceUID == built.study_instance_uid
        assert seg.FrameOfReferenceUID == source.FrameOfReferenceUID != main.FrameOfReferenceUID
        [referenced] = seg.ReferencedSeriesSequence
        assert referenced.SeriesInstanceUID == built.series_instance_uid
        own = {str(pydicom.dcmread(p, stop_before_pixels=True).SOPInstanceUID) for p in built.files}
        assert {i.ReferencedSOPInstanceUID for i in referenced.ReferencedInstanceSequence} <= own
        assert seg.SeriesInstanceUID not in {main.SeriesInstanceUID, built.series_instance_uid}
        # The same segments as the T1c's SEG: labels, codes, colours, algorithm and model.
        for ours, theirs in zip(seg.SegmentSequence, main.SegmentSequence, strict=True):
            for keyword in ("SegmentNumber", "SegmentLabel", "SegmentedPropertyTypeCodeSequence",
                            "SegmentedPropertyCategoryCodeSequence", "RecommendedDisplayCIELabValue",
                            "SegmentAlgorithmType", "SegmentAlgorithmName",
                            "SegmentationAlgorithmIdentificationSequence"):
                assert ours.get(keyword) == theirs.get(keyword), keyword
        for keyword in ("ContentLabel", "ContentDescription", "Manufacturer", "SoftwareVersions",
                        "DeviceSerialNumber", "PatientID"):
            assert seg.get(keyword) == main.get(keyword), keyword


def test_the_flair_seg_lies_where_the_registration_puts_the_t1c_seg(
    moved_series_job: MovedSeriesJob,
) -> None:
    segs = _results(moved_series_job.workspace)
    on_t1c = segment_points_mm(segs[Role.T1C])
    selection = moved_series_job.workspace.read_selection()
    t1c_voxel_mm3 = float(np.prod(convert_series(selection.files(Role.T1C)).image.GetSpacing()))
    for role in (Role.FLAIR, Role.T2):
        transform = _registration(moved_series_job.workspace, role)
        on_series = segment_points_mm(segs[role])
        seg = pydicom.dcmread(segs[role], stop_before_pixels=True)
        orientation = np.asarray(
            seg.SharedFunctionalGroupsSequence[0].PlaneOrientationSequence[0].ImageOrientationPatient,
            dtype=float,
        )
        axes = np.stack([orientation[:3], orientation[3:], np.cross(orientation[:3], orientation[3:])])
        voxel_mm = np.asarray(convert_series(selection.files(role)).image.GetSpacing())  # ~0.9 x 0.9 x 5.5
        assert set(on_series) == set(on_t1c) == {1, 2, 3}
        for number, points in on_t1c.items():
            expected = np.asarray(transform.TransformPoint(tuple(points.mean(axis=0))))
            found = on_series[number].mean(axis=0)
            off_voxels = np.abs(axes @ (found - expected)) / voxel_mm
            print(f"{role.value} segment {number}: {np.round(off_voxels, 2)} voxels from T(centroid)")
            assert np.all(off_voxels < 1.0), (role, number, off_voxels)
            # The T1c's SEG drawn here by patient coordinates would be far off: that is the point.
            assert np.linalg.norm(expected - points.mean(axis=0)) > 10
        # About as much tumour as on the T1c (whole tumour: the 12 mm necrosis alone, sampled
        # by nearest neighbour on 5.5 mm slices, varies by a fifth with where the slices fall).
        ratio = sum(map(len, on_series.values())) * np.prod(voxel_mm) / (
            sum(map(len, on_t1c.values())) * t1c_voxel_mm3
        )
        print(f"{role.value}: whole tumour {ratio:.3f} of the T1c's")
        assert 0.9 < ratio < 1.1, (role, ratio)


def test_the_registered_segs_are_valid_dicom(moved_series_job: MovedSeriesJob) -> None:
    for role, path in _results(moved_series_job.workspace).items():
        validation = dciodvfy(path)
        assert validation.errors == [], (role, validation.errors)
        assert unexpected_warnings(validation) == [], (role, validation.warnings)


def _shifted_copy(files: list[Path], out_dir: Path, shift_mm: tuple[int, int, int]) -> list[Path]:
    """The series with every ImagePositionPatient moved by ``shift_mm``.

    Added in decimal, then written in DS's 16 characters: off the exact shift by < 1e-12 mm.
    """
    out_dir.mkdir()
    copies = []
    for path in files:
        dataset = pydicom.dcmread(path)
        dataset.ImagePositionPatient = [
            format_number_as_ds(float(Decimal(str(v)) + shift))
            for v, shift in zip(dataset.ImagePositionPatient, shift_mm, strict=True)
        ]
        copies.append(out_dir / path.name)
        dataset.save_as(copies[-1], enforce_file_format=True)
    return copies


def test_a_known_shift_of_the_series_shifts_its_seg_by_exactly_that(
    moved_series_job: MovedSeriesJob, tmp_path: Path
) -> None:
    """Synthetic shift, and why: a real second acquisition has an unknown motion; here the
    FLAIR's positions move by 10 mm and its recorded registration by the same 10 mm (what a
    perfect re-registration would find), so the SEG must move by exactly 10 mm with the same
    voxels. Re-registering instead would test the registration (tests/pipeline/
    test_registration.py does) and blur the answer by its ~0.1 mm."""
    shift = (6, 0, 8)
    workspace = moved_series_job.copy(tmp_path / "job")
    selection = workspace.read_selection()
    files = _shifted_copy(selection.files(Role.FLAIR), tmp_path / "flair_shifted", shift)
    flair = selection.roles[Role.FLAIR].model_copy(update={"files": tuple(files)})
    workspace.write_selection(selection.model_copy(update={"roles": {**selection.roles, Role.FLAIR: flair}}))
    write_volume(workspace, Role.FLAIR, convert_series(files))
    record: Any = workspace.read_preprocessing_record()
    parameters = record["registration"]["flair"]["transform"]["parameters"]
    parameters[3:] = [t + s for t, s in zip(parameters[3:], shift, strict=True)]
    workspace.write_preprocessing_record(record)

    run_step("write", workspace.root, moved_series_job.settings)
    before = pydicom.dcmread(_results(moved_series_job.workspace)[Role.FLAIR])
    after = pydicom.dcmread(_results(workspace)[Role.FLAIR])
    np.testing.assert_array_equal(after.pixel_array, before.pixel_array)  # the same voxels
    assert len(after.PerFrameFunctionalGroupsSequence) == len(before.PerFrameFunctionalGroupsSequence)
    for was, now in zip(before.PerFrameFunctionalGroupsSequence, after.PerFrameFunctionalGroupsSequence, strict=True):
        assert (now.DerivationImageSequence[0].SourceImageSequence[0].ReferencedSOPInstanceUID
                == was.DerivationImageSequence[0].SourceImageSequence[0].ReferencedSOPInstanceUID)
        np.testing.assert_allclose(
            np.asarray(now.PlanePositionSequence[0].ImagePositionPatient, dtype=float)
            - np.asarray(was.PlanePositionSequence[0].ImagePositionPatient, dtype=float),
            shift, atol=1e-9,
        )
    moved = segment_points_mm(_results(workspace)[Role.FLAIR])
    for number, points in segment_points_mm(_results(moved_series_job.workspace)[Role.FLAIR]).items():
        np.testing.assert_allclose(moved[number] - points, np.broadcast_to(shift, points.shape), atol=1e-6)
    # The T2 did not move: its SEG has the very same voxels and positions.
    t2_before = pydicom.dcmread(_results(moved_series_job.workspace)[Role.T2])
    t2_after = pydicom.dcmread(_results(workspace)[Role.T2])
    np.testing.assert_array_equal(t2_after.pixel_array, t2_before.pixel_array)


@pytest.fixture
def write_again(moved_series_job: MovedSeriesJob, tmp_path: Path) -> Callable[..., Workspace]:
    """Run the write step (SEG only) on a copy of the job folder with other [result_series]."""

    def run(**result_series: object) -> Workspace:
        workspace = moved_series_job.copy(tmp_path / f"job{len(list(tmp_path.iterdir()))}")
        settings = StepSettings.from_settings(
            Settings(storage={"data_dir": str(tmp_path / "data")}, result_series=result_series),
            ["seg"],
        )
        run_step("write", workspace.root, settings)
        return workspace

    return run


def test_no_seg_of_its_own_for_a_series_moved_less_than_the_limits(
    moved_series_job: MovedSeriesJob, write_again: Callable[..., Workspace]
) -> None:
    motion = moved_series_job.workspace.read_quality().motion
    flair, t2 = motion[Role.FLAIR], motion[Role.T2]
    assert t2.rotation_deg < flair.rotation_deg  # measured: T2 8.1°, FLAIR 13.7°
    # Translations above both, rotation limit between the two: only the FLAIR moved "enough".
    between = write_again(
        registered_series_min_translation_mm=100.0,
        registered_series_min_rotation_deg=(t2.rotation_deg + flair.rotation_deg) / 2,
    )
    assert set(_results(between)) == {Role.T1C, Role.FLAIR}
    assert sorted(p.name.split("-")[0] for p in between.outputs_dir.iterdir()) == ["seg", "seg"]
    nothing = write_again(registered_series_min_translation_mm=100.0, registered_series_min_rotation_deg=90.0)
    assert set(_results(nothing)) == {Role.T1C}
    assert len(list(nothing.outputs_dir.iterdir())) == 1
    assert set(_results(write_again(registered_series_segs=[]))) == {Role.T1C}


def test_a_job_folder_without_the_grid_label_map_gets_the_t1cs_seg_and_says_why(
    moved_series_job: MovedSeriesJob, tmp_path: Path
) -> None:
    """As one inferred before this version left it: the T1c's results are right, so no failure."""
    workspace = moved_series_job.copy(tmp_path / "job")
    workspace.grid_labels_path.unlink()
    record: Any = run_step("write", workspace.root, moved_series_job.settings)
    assert set(_results(workspace)) == {Role.T1C}
    assert record["registered_series"]["flair"]["seg"] is False
    assert "labels_grid.mha is missing" in record["registered_series"]["flair"]["why"]


def test_a_failed_write_of_a_registered_seg_keeps_nothing(
    moved_series_job: MovedSeriesJob, write_again: Callable[..., Workspace],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    real_write = writer_module._write_atomic
    calls: list[Path] = []

    def fail_third(dataset: pydicom.Dataset, path: Path) -> None:
        calls.append(path)
        if len(calls) == 3:  # the T1c's SEG and the FLAIR's are written by now
            raise OSError(28, "No space left on device")
        real_write(dataset, path)

    monkeypatch.setattr(writer_module, "_write_atomic", fail_third)
    with pytest.raises(OSError, match="nothing was kept"):
        write_again()
    job = calls[0].parent.parent  # outputs/<kind>-<uid>.dcm in the copied job folder
    assert list((job / "outputs").iterdir()) == []
    assert not (job / "results.json").exists()

