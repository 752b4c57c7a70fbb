"""Images and arrays in a job folder: converted volumes, the network input, label maps.

The heavy half of the job folder (SimpleITK, numpy, the pipeline's data types), used by the
steps in worker processes; ``pipeline/workspace.py`` has the layout and the light part.
MetaImage (``.mha``) keeps the geometry in doubles, so a volume read back has exactly the
direction and origin it was written with.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import SimpleITK as sitk

from segnode.pipeline.conversion import ConvertedVolume, SliceRef
from segnode.pipeline.preprocessing import CHANNEL_ORDER, PreprocessedStudy
from segnode.pipeline.selection import Role
from segnode.pipeline.workspace import Workspace, WorkspaceError, replace_atomically


def write_image(workspace: Workspace, relative: str, image: sitk.Image) -> Path:
    path = workspace.root / relative
    replace_atomically(path, lambda tmp: sitk.WriteImage(image, str(tmp), useCompression=True))
    return path


def read_image(workspace: Workspace, relative: str) -> sitk.Image:
    path = workspace.root / relative
    if not path.is_file():
        raise WorkspaceError(f"{relative} is missing in the job folder {workspace.root}")
    return sitk.ReadImage(str(path))


def write_volume(workspace: Workspace, role: Role, volume: ConvertedVolume) -> None:
    write_image(workspace, f"volumes/{role.value}.mha", volume.image)
    workspace.write_json(
        f"volumes/{role.value}.json",
        {
            "series_instance_uid": volume.series_instance_uid,
            "slices": [
                {
                    "sop_instance_uid": s.sop_instance_uid,
                    "frame": s.frame,
                    "position_mm": s.position_mm,
                }
                for s in volume.slices
            ],
            "notes": list(volume.notes),
        },
    )


def read_volume(workspace: Workspace, role: Role) -> ConvertedVolume:
    meta = workspace.read_json(f"volumes/{role.value}.json")
    return ConvertedVolume(
        image=read_image(workspace, f"volumes/{role.value}.mha"),
        series_instance_uid=meta["series_instance_uid"],
        slices=tuple(
            SliceRef(s["sop_instance_uid"], int(s["frame"]), tuple(s["position_mm"]))
            for s in meta["slices"]
        ),
        notes=tuple(meta["notes"]),
    )


def write_preprocessed(workspace: Workspace, study: PreprocessedStudy) -> None:
    channels = workspace.root / "preprocessed" / "channels.npz"
    replace_atomically(
        channels,
        lambda tmp: np.savez(
            tmp.open("wb"), image=study.stacked(CHANNEL_ORDER), brain_mask=study.brain_mask
        ),
    )
    grid = sitk.Image(study.grid.GetSize(), sitk.sitkUInt8)
    grid.CopyInformation(study.grid)
    write_image(workspace, "preprocessed/grid.mha", grid)
    transform = workspace.root / "preprocessed" / "to_reference.tfm"
    replace_atomically(transform, lambda tmp: sitk.WriteTransform(study.to_reference, str(tmp)))
    workspace.write_json("preprocessed/record.json", study.record)


def read_preprocessed(workspace: Workspace) -> PreprocessedStudy:
    channels = workspace.root / "preprocessed" / "channels.npz"
    transform = workspace.root / "preprocessed" / "to_reference.tfm"
    if not channels.is_file() or not transform.is_file():
        raise WorkspaceError(
            f"preprocessing outputs are missing in the job folder {workspace.root}"
        )
    with np.load(channels) as arrays:
        image, mask = arrays["image"], arrays["brain_mask"]
    return PreprocessedStudy(
        channels={role: image[index] for index, role in enumerate(CHANNEL_ORDER)},
        brain_mask=mask,
        grid=read_image(workspace, "preprocessed/grid.mha"),
        to_reference=sitk.ReadTransform(str(transform)),
        record=workspace.read_json("preprocessed/record.json"),
    )
