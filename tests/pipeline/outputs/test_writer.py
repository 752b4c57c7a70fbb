"""write_results: kinds, atomic files, refusals, both label conventions, Enhanced MR sources."""

from __future__ import annotations

import json
from pathlib import Path

import highdicom as hd
import numpy as np
import pytest
import SimpleITK as sitk

from segnode.config.settings import ResultSeriesSettings
from segnode.pipeline.conversion import convert_series
from segnode.pipeline.outputs import OutputError, OutputSpecError, write_results
from segnode.pipeline.outputs import writer as writer_module
from segnode.vocabulary import Region
from tests.helpers import require_shared_data
from tests.pipeline.outputs.dicom_checks import (
    PROVENANCE,
    T1cCase,
    Written,
    dciodvfy,
    synthetic_labels,
)


def test_record_lists_every_written_file_and_the_volumes(written: Written) -> None:
    record = written.record
    kinds = [obj.kind for obj in record]
    assert kinds[:2] == ["seg", "sr"] and kinds[-1] == "pdf"
    assert set(kinds) == {"seg", "sr", "sc", "pdf"}
    folder = record[0].path.parent
    assert sorted(p.name for p in folder.iterdir()) == sorted(obj.path.name for obj in record)
    for obj in record:
        assert obj.path.name == f"{obj.kind}-{obj.sop_instance_uid}.dcm"
    as_json = json.loads(json.dumps(record.as_record()))
    assert as_json["volumes"]["WT"]["voxels"] == record.statistics[Region.WT].voxel_count
    assert as_json["provenance"]["model_sha256"] == PROVENANCE.model_sha256
    assert len(as_json["objects"]) == len(record)


def test_sr_alone_writes_the_seg_it_cites(written_sr_only: Written) -> None:
    assert [obj.kind for obj in written_sr_only.record] == ["seg", "sr"]


def test_unknown_kind_and_convention_are_refused(
    t1c: T1cCase, labels: sitk.Image, tmp_path: Path
) -> None:
    with pytest.raises(OutputSpecError, match="unknown result kinds"):
        write_results(
            t1c.files,
            t1c.volume.slices,
            labels,
            4,
            PROVENANCE,
            ResultSeriesSettings(),
            ["nifti"],
            tmp_path,
        )  # type: ignore[list-item]
    with pytest.raises(OutputSpecError, match="neither 4"):
        write_results(
            t1c.files, t1c.volume.slices, labels, 5, PROVENANCE, ResultSeriesSettings(), ["seg"], tmp_path
        )
    assert list(tmp_path.iterdir()) == []


def test_labels_outside_the_convention_are_refused(
    t1c: T1cCase, labels: sitk.Image, tmp_path: Path
) -> None:
    # The 2017 map read as BraTS 2023: label 4 is undefined there.
    with pytest.raises(OutputError, match=r"values \[4\]"):
        write_results(
            t1c.files, t1c.volume.slices, labels, 3, PROVENANCE, ResultSeriesSettings(), ["seg"], tmp_path
        )


def test_label_map_off_the_source_grid_is_refused(
    t1c: T1cCase, labels: sitk.Image, tmp_path: Path
) -> None:
    shifted = sitk.Image(labels)
    origin = (
        np.asarray(labels.GetOrigin()) + 2.0 * np.asarray(labels.GetDirection()).reshape(3, 3)[:, 2]
    )
    shifted.SetOrigin(tuple(origin))
    with pytest.raises(OutputError, match="not in the source series' geometry"):
        write_results(
            t1c.files,
            t1c.volume.slices,
            shifted,
            4,
            PROVENANCE,
            ResultSeriesSettings(),
            ["seg"],
            tmp_path,
        )
    cropped = labels[:, :, 1:]
    with pytest.raises(OutputError, match="label map size"):
        write_results(
            t1c.files,
            t1c.volume.slices,
            cropped,
            4,
            PROVENANCE,
            ResultSeriesSettings(),
            ["seg"],
            tmp_path,
        )
    with pytest.raises(OutputError, match="does not exist"):
        write_results(
            t1c.files,
            t1c.volume.slices,
            labels,
            4,
            PROVENANCE,
            ResultSeriesSettings(),
            ["seg"],
            tmp_path / "absent",
        )


def test_a_failed_write_leaves_nothing_behind(
    t1c: T1cCase, labels: sitk.Image, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    real_write = writer_module._write_atomic
    calls: list[Path] = []

    def fail_second(dataset: object, path: Path) -> None:
        calls.append(path)
        if len(calls) == 2:
            raise OSError(28, "No space left on device")
        real_write(dataset, path)  # type: ignore[arg-type]

    monkeypatch.setattr(writer_module, "_write_atomic", fail_second)
    # An OSError, not an OutputError: the job runner treats it as transient and retries.
    with pytest.raises(OSError, match="nothing was kept") as caught:
        write_results(
            t1c.files,
            t1c.volume.slices,
            labels,
            4,
            PROVENANCE,
            ResultSeriesSettings(),
            ["seg", "sr"],
            tmp_path,
        )
    assert not isinstance(caught.value, OutputError) and caught.value.errno == 28
    assert list(tmp_path.iterdir()) == []


def test_brats_2023_labels(t1c: T1cCase, tmp_path: Path) -> None:
    labels = synthetic_labels(t1c.volume, et_label=3)
    record = write_results(
        t1c.files,
        t1c.volume.slices,
        labels,
        3,
        PROVENANCE,
        ResultSeriesSettings(),
        ["seg", "sr"],
        tmp_path,
    )
    array = sitk.GetArrayFromImage(labels)
    assert record.statistics[Region.ET].voxel_count == int((array == 3).sum()) > 0
    seg = hd.seg.segread(record.of_kind("seg")[0].path)
    et = seg.get_pixels_by_source_instance(
        [ref.sop_instance_uid for ref in t1c.volume.slices], segment_numbers=[3]
    )[..., 0]
    np.testing.assert_array_equal(et > 0, array == 3)
    for obj in record:
        assert dciodvfy(obj.path).errors == []


# The phantom's PatientName "CS-AI Test" has one component; highdicom warns when copying it.
@pytest.mark.filterwarnings('ignore:The string "CS-AI Test":UserWarning')
def test_enhanced_mr_source(tmp_path: Path) -> None:
    """One Philips Enhanced MR file (12 frames, spacing and orientation per frame)."""
    files = sorted((require_shared_data() / "philips_elitionx_phantom_T1W_TSE_enhanced").iterdir())
    volume = convert_series(files)
    array = np.zeros(sitk.GetArrayFromImage(volume.image).shape, dtype=np.uint8)
    z, rows, columns = array.shape
    array[
        z // 2 - 2 : z // 2 + 2,
        rows // 2 - 30 : rows // 2 + 30,
        columns // 2 - 30 : columns // 2 + 30,
    ] = 2
    array[
        z // 2 - 1 : z // 2 + 1,
        rows // 2 - 10 : rows // 2 + 10,
        columns // 2 - 10 : columns // 2 + 10,
    ] = 4
    array[z // 2, rows // 2 - 3 : rows // 2 + 3, columns // 2 - 3 : columns // 2 + 3] = 1
    labels = sitk.GetImageFromArray(array)
    labels.CopyInformation(volume.image)
    settings = ResultSeriesSettings()
    record = write_results(
        files, volume.slices, labels, 4, PROVENANCE, settings, ["seg", "sr", "sc", "pdf"], tmp_path
    )
    for obj in record:
        assert dciodvfy(obj.path).errors == [], obj.path.name
    seg = hd.seg.segread(record.of_kind("seg")[0].path)
    (uid,) = {ref.sop_instance_uid for ref in volume.slices}
    frames = [ref.frame for ref in volume.slices]
    decoded = seg.get_pixels_by_source_frame(
        uid,
        source_frame_numbers=frames,
        segment_numbers=[1, 2, 3],
        assert_missing_frames_are_empty=True,
    )
    for index, label in enumerate([1, 2, 4]):
        np.testing.assert_array_equal(decoded[..., index] > 0, array == label)
    sr = hd.sr.srread(record.of_kind("sr")[0].path)
    outlines = [
        scoord
        for group in sr.content.get_image_measurement_groups()
        for measurement in group.get_measurements()
        for scoord in measurement.referenced_coordinates
    ]
    assert len(outlines) == 5  # one per region, each on a frame of the one instance
    for scoord in outlines:
        assert scoord.ContentSequence[0].ReferencedSOPSequence[0].ReferencedFrameNumber in frames
