"""Series to volume on real scanner data: geometry, rejections, duplicates, compression."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import nibabel as nib
import numpy as np
import pydicom
import pytest
import SimpleITK as sitk

from segnode.pipeline.conversion import SpacingPolicy, convert_series
from segnode.pipeline.errors import ConversionError
from tests.helpers import require_shared_data, require_tool

EXPECTED = {
    "philips_ingenia_elitionx_3T_sag3D_MPRAGE_classic": (256, 256, 170),
    "philips_elitionx_phantom_T1W_FFE_classic": (256, 256, 24),
    "philips_elitionx_phantom_T1W_TSE_enhanced": (256, 256, 12),
    "siemens_prisma_E11_t1_fl2d_sag_HFS": (256, 256, 35),
    "siemens_prisma_E11_t1_fl2d_sag_HFDL": (256, 256, 35),
    "siemens_prisma_XA30_T1w_tfl_enhanced_multiframe": (128, 128, 96),
}
REJECTED = {
    "ge_mr750_3T_axial_EPI_human": "150 images at 15 positions (10 per position): a multi-volume series",
    "siemens_trio_12bit": "3 images at 1 positions",
    "siemens_trio_transfer_syntaxes": "9 images at 1 positions",
    "toshiba_galan_DTI_one_slice": "a single slice is not a volume",
}


def folder_files(name: str) -> list[Path]:
    return sorted((require_shared_data() / name).iterdir())


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_structural_series_convert(name: str) -> None:
    volume = convert_series(folder_files(name))
    assert volume.image.GetSize() == EXPECTED[name]
    direction = np.asarray(volume.image.GetDirection()).reshape(3, 3)
    np.testing.assert_allclose(direction.T @ direction, np.eye(3), atol=1e-5)
    assert len(volume.slices) == EXPECTED[name][2]


@pytest.mark.parametrize("name", sorted(REJECTED))
def test_non_volumes_are_rejected_with_a_reason(name: str) -> None:
    with pytest.raises(
        ConversionError, match=REJECTED[name].replace("(", r"\(").replace(")", r"\)")
    ):
        convert_series(folder_files(name))


def test_matches_dicom2nifti_on_the_philips_3d_series(tmp_path: Path) -> None:
    """An independent maintained converter agrees on voxels and affine."""
    import dicom2nifti

    name = "philips_ingenia_elitionx_3T_sag3D_MPRAGE_classic"
    ours = convert_series(folder_files(name)).image
    out = tmp_path / "d2n.nii.gz"
    dicom2nifti.dicom_series_to_nifti(
        str(require_shared_data() / name), str(out), reorient_nifti=False
    )
    theirs = nib.as_closest_canonical(nib.load(out))
    # Our image -> RAS NIfTI through SimpleITK's writer, then the same canonical form.
    ours_path = tmp_path / "ours.nii.gz"
    sitk.WriteImage(ours, str(ours_path))
    mine = nib.as_closest_canonical(nib.load(ours_path))
    np.testing.assert_allclose(mine.affine, theirs.affine, atol=1e-3)
    np.testing.assert_array_equal(
        np.asarray(mine.dataobj, dtype=np.float32), np.asarray(theirs.dataobj, dtype=np.float32)
    )


def test_same_subject_hfs_and_decubitus_share_patient_space_extent() -> None:
    """HFS and HFDL: different PatientPosition, both volumes in LPS; their physical centres are
    within a head's width (the decubitus scan is not flipped into another hemisphere)."""
    hfs = convert_series(folder_files("siemens_prisma_E11_t1_fl2d_sag_HFS")).image
    hfdl = convert_series(folder_files("siemens_prisma_E11_t1_fl2d_sag_HFDL")).image

    def centre(image: sitk.Image) -> np.ndarray:
        size = np.asarray(image.GetSize()) - 1
        return np.asarray(image.TransformContinuousIndexToPhysicalPoint((size / 2).tolist()))

    assert np.linalg.norm(centre(hfs) - centre(hfdl)) < 150
    assert (
        pydicom.dcmread(folder_files("siemens_prisma_E11_t1_fl2d_sag_HFDL")[0]).PatientPosition
        == "HFDL"
    )


def test_duplicate_slice_is_resolved_deterministically(tmp_path: Path) -> None:
    """A re-sent slice (synthetic: a real slice copied with a new SOP UID and a higher
    InstanceNumber) collapses to one slice, and the note names the kept instance."""
    files = folder_files("siemens_prisma_E11_t1_fl2d_sag_HFS")
    copy = tmp_path / "dup.dcm"
    dataset = pydicom.dcmread(files[10])
    dataset.SOPInstanceUID = "1.2.826.0.1.3680043.8.498.555"
    dataset.InstanceNumber = 999
    dataset.save_as(copy)
    original = convert_series(files)
    with_duplicate = convert_series([*files, copy])
    assert with_duplicate.image.GetSize() == original.image.GetSize()
    np.testing.assert_array_equal(
        sitk.GetArrayFromImage(with_duplicate.image), sitk.GetArrayFromImage(original.image)
    )
    [note] = with_duplicate.notes
    assert "kept 1.2.826.0.1.3680043.8.498.555" in note
    again = convert_series(list(reversed([*files, copy])))
    assert again.notes == with_duplicate.notes


def test_gap_is_rejected_or_resampled_by_policy() -> None:
    files = folder_files("siemens_prisma_E11_t1_fl2d_sag_HFS")
    gapped = files[:15] + files[16:]  # one real slice missing
    with pytest.raises(ConversionError, match=r"slice spacing varies from 4\.800 to 9\.600 mm"):
        convert_series(gapped)
    resampled = convert_series(gapped, SpacingPolicy.RESAMPLE)
    assert resampled.image.GetSize()[2] == 35
    assert resampled.image.GetSpacing()[2] == pytest.approx(4.8, abs=1e-3)
    assert "resampled to uniform" in resampled.notes[-1]


@pytest.mark.parametrize(
    ("tool", "options"), [("dcmcjpls", []), ("dcmcrle", []), ("dcmcjpeg", ["+e1"])]
)
def test_compressed_series_decode_to_the_same_voxels(
    tmp_path: Path, tool: str, options: list[str]
) -> None:
    """JPEG-LS, RLE and JPEG lossless copies (made by DCMTK from the real series) convert identically."""
    files = folder_files("siemens_prisma_E11_t1_fl2d_sag_HFS")
    binary = require_tool(tool)
    compressed = []
    for path in files:
        target = tmp_path / path.name
        subprocess.run([binary, *options, str(path), str(target)], check=True, capture_output=True)
        compressed.append(target)
    assert pydicom.dcmread(compressed[0]).file_meta.TransferSyntaxUID.is_compressed
    reference = convert_series(files).image
    decoded = convert_series(compressed).image
    np.testing.assert_array_equal(
        sitk.GetArrayFromImage(decoded), sitk.GetArrayFromImage(reference)
    )
    assert decoded.GetOrigin() == reference.GetOrigin()
    shutil.rmtree(tmp_path, ignore_errors=True)


@pytest.mark.parametrize("role", ["t1", "t1c", "t2", "flair"])
def test_tcga_series_convert_to_the_original_voxels_and_affine(tcga_study, role: str) -> None:  # noqa: ANN001
    """Conversion returns exactly the NIfTI's voxels and geometry (LPS) for every sequence."""
    built = tcga_study[role]
    volume = convert_series(built.files).image
    source = nib.load(built.source_nifti)
    voxels = np.asarray(source.dataobj, dtype=np.float32)
    ras_to_lps = np.diag([-1.0, -1.0, 1.0, 1.0])
    affine = ras_to_lps @ source.affine
    # Every voxel of our volume, mapped through both geometries, lands on the same value.
    size = np.asarray(volume.GetSize())
    ours = sitk.GetArrayFromImage(volume).transpose(2, 1, 0)
    index = np.stack(np.meshgrid(*[np.arange(n) for n in size], indexing="ij"), axis=-1).reshape(-1, 3)
    origin = np.asarray(volume.GetOrigin())
    matrix = np.asarray(volume.GetDirection()).reshape(3, 3) @ np.diag(volume.GetSpacing())
    points = index @ matrix.T + origin
    source_index = (np.linalg.inv(affine) @ np.c_[points, np.ones(len(points))].T).T[:, :3]
    rounded = np.rint(source_index).astype(int)
    np.testing.assert_allclose(source_index, rounded, atol=1e-3)
    np.testing.assert_array_equal(ours.reshape(-1), voxels[tuple(rounded.T)])
