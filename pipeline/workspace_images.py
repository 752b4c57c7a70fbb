"""Images and arrays in a job folder: converted volumes, the network input, label maps.

The heavy half of the job folder (SimpleITK, numpy, the pipeline's data types), used by the
steps in worker processes; ``pipeline/workspace.py`` has the layout, the records and the
light part. MetaImage (``.mha``) keeps the geometry in doubles, so a volume read back has
exactly the direction and origin it was written with.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import SimpleITK as sitk

from segnode.pipeline.brain_extraction import BrainMask
from segnode.pipeline.conversion import ConvertedVolume, SliceRef
from segnode.pipeline.preprocessing import PreprocessedStudy
from segnode.pipeline.workspace import BrainMaskRecord, SliceRecord, VolumeRecord, Workspace
from segnode.vocabulary import CHANNEL_ORDER, Role


def write_image(workspace: Workspace, path: Path, image: sitk.Image) -> Path:
    """``image`` at ``path`` (one of the workspace's paths), compressed, atomically."""
    return workspace.write_file(
        path, lambda tmp: sitk.WriteImage(image, str(tmp), useCompression=True)
    )


def read_image(workspace: Workspace, path: Path) -> sitk.Image:
    return sitk.ReadImage(str(workspace.require_file(path)))


def write_volume(workspace: Workspace, role: Role, volume: ConvertedVolume) -> None:
    write_image(workspace, workspace.volume_path(role), volume.image)
    workspace.write_volume_record(
        role,
        VolumeRecord(
            series_instance_uid=volume.series_instance_uid,
            slices=tuple(
                SliceRecord(
                    sop_instance_uid=s.sop_instance_uid, frame=s.frame, position_mm=s.position_mm
                )
                for s in volume.slices
            ),
            notes=volume.notes,
        ),
    )


def read_volume(workspace: Workspace, role: Role) -> ConvertedVolume:
    record = workspace.read_volume_record(role)
    return ConvertedVolume(
        image=read_image(workspace, workspace.volume_path(role)),
        series_instance_uid=record.series_instance_uid,
        slices=tuple(SliceRef(s.sop_instance_uid, s.frame, s.position_mm) for s in record.slices),
        notes=record.notes,
    )


def write_brain_mask(workspace: Workspace, role: Role, series_uid: str, brain: BrainMask) -> None:
    """The mask first, its record last: a record always names a complete mask."""
    write_image(workspace, workspace.brain_mask_path, brain.mask)
    workspace.write_brain_mask_record(
        BrainMaskRecord(
            on=role,
            series_instance_uid=series_uid,
            tool=brain.tool,
            threshold=brain.threshold,
            dilate_voxels=brain.dilate_voxels,
            device=brain.device,
            volume_ml=brain.volume_ml,
            seconds=brain.seconds,
        )
    )


def read_brain_mask(workspace: Workspace, role: Role, series_uid: str) -> BrainMask | None:
    """The convert step's mask of series ``series_uid`` (in ``role``), or None if it left none."""
    record = workspace.read_brain_mask_record()
    if record is None or record.on is not role or record.series_instance_uid != series_uid:
        return None
    return BrainMask(
        mask=read_image(workspace, workspace.brain_mask_path),
        volume_ml=record.volume_ml,
        seconds=record.seconds,
        tool=record.tool,
        threshold=record.threshold,
        dilate_voxels=record.dilate_voxels,
        device=record.device,
    )


def write_preprocessed(workspace: Workspace, study: PreprocessedStudy) -> None:
    def save_channels(tmp: Path) -> None:
        with tmp.open("wb") as handle:
            np.savez(handle, image=study.stacked(CHANNEL_ORDER), brain_mask=study.brain_mask)

    workspace.write_file(workspace.channels_path, save_channels)
    grid = sitk.Image(study.grid.GetSize(), sitk.sitkUInt8)
    grid.CopyInformation(study.grid)
    write_image(workspace, workspace.grid_path, grid)
    workspace.write_file(
        workspace.to_reference_path,
        lambda tmp: sitk.WriteTransform(study.to_reference, str(tmp)),
    )
    workspace.write_preprocessing_record(study.record)


def read_preprocessed(workspace: Workspace) -> PreprocessedStudy:
    channels = workspace.require_file(workspace.channels_path)
    transform = workspace.require_file(workspace.to_reference_path)
    with np.load(channels) as arrays:
        image, mask = arrays["image"], arrays["brain_mask"]
    return PreprocessedStudy(
        channels={role: image[index] for index, role in enumerate(CHANNEL_ORDER)},
        brain_mask=mask,
        grid=read_image(workspace, workspace.grid_path),
        to_reference=sitk.ReadTransform(str(transform)),
        record=dict(workspace.read_preprocessing_record()),
    )
