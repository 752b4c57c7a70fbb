"""Finding and loading BraTS-style cases: the shared real cases, and synthetic files named
like BraTS 2018-2021 and 2023 (tiny NIfTIs written to tmp_path; their contents are made up)."""

from __future__ import annotations

from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from segnode.pipeline.training.brats_data import (
    BratsCase,
    TrainingDataError,
    file_role,
    find_case,
    find_cases,
    load_case,
    normalise_nonzero,
)
from segnode.vocabulary import Role
from tests.helpers import SHARED_DATA, require_data

NIFTI = SHARED_DATA / "nifti"
TCGA = NIFTI / "TCGA-FG-6692_sri24_skullstripped"
TOOLKIT = NIFTI / "brats-toolkit-preprocessed-case"
GLI = NIFTI / "BraTS-GLI-00001-000"
NATIVE = NIFTI / "TCGA-FG-6692_native_siemens"


def require_nifti() -> Path:
    return require_data(NIFTI)


def write_synthetic_case(folder: Path, names: dict[str, str], et_label: int) -> np.ndarray:
    """Four random 8³ images and a label map with NCR, ED and ET blocks; returns the labels."""
    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    affine = np.diag([-1.0, -1.0, 1.0, 1.0])
    for role, name in names.items():
        if role == "seg":
            continue
        data = rng.uniform(100, 200, size=(8, 8, 8)).astype(np.float32)
        data[:2] = 0  # background outside the "brain"
        nib.save(nib.Nifti1Image(data, affine), folder / name)
    labels = np.zeros((8, 8, 8), dtype=np.uint8)
    labels[3:7, 3:7, 3:7] = 2
    labels[4:6, 4:6, 4:6] = 1
    labels[5, 5, 5] = et_label
    nib.save(nib.Nifti1Image(labels, affine), folder / names["seg"])
    return labels


BRATS_2021_NAMES = {
    "flair": "BraTS2021_00000_flair.nii.gz",
    "t1": "BraTS2021_00000_t1.nii.gz",
    "t1c": "BraTS2021_00000_t1ce.nii.gz",
    "t2": "BraTS2021_00000_t2.nii.gz",
    "seg": "BraTS2021_00000_seg.nii.gz",
}
BRATS_2023_NAMES = {
    "flair": "BraTS-GLI-00000-000-t2f.nii.gz",
    "t1": "BraTS-GLI-00000-000-t1n.nii.gz",
    "t1c": "BraTS-GLI-00000-000-t1c.nii.gz",
    "t2": "BraTS-GLI-00000-000-t2w.nii.gz",
    "seg": "BraTS-GLI-00000-000-seg.nii.gz",
}


@pytest.mark.parametrize(
    ("name", "role"),
    [
        ("Brats18_2013_2_1_flair.nii.gz", "flair"),
        ("Brats18_2013_2_1_t1ce.nii.gz", "t1c"),
        ("BraTS20_Training_001_seg.nii", "label"),
        ("BraTS-GLI-00001-000-t1n.nii.gz", "t1"),
        ("BraTS-GLI-00001-000-t2w.nii.gz", "t2"),
        ("BraTS-GLI-00001-000-seg.nii.gz", "label"),
        ("fla.nii.gz", "flair"),
        ("seg_fusion_mav_5algos.nii.gz", "label"),
        ("seg_algorithm.nii.gz", "label"),
        ("t1c.txt", None),
        ("brain_mask.nii.gz", None),
    ],
)
def test_file_roles(name: str, role: str | None) -> None:
    assert file_role(Path(name)) == role


@pytest.mark.parametrize(
    ("names", "et_label"), [(BRATS_2021_NAMES, 4), (BRATS_2023_NAMES, 3)], ids=["2021", "2023"]
)
def test_synthetic_brats_naming_schemes(
    tmp_path: Path, names: dict[str, str], et_label: int
) -> None:
    labels = write_synthetic_case(tmp_path / "case-001", names, et_label)
    case = find_case(tmp_path / "case-001")
    assert case.case_id == "case-001"
    for role in Role:
        assert case.path(role).name == names[role]
    assert case.label is not None and case.label.name == names["seg"]
    image, regions = load_case(case, ("t1c", "t1", "t2", "flair"))
    assert image.shape == (4, 8, 8, 8) and image.dtype == np.float32
    assert regions is not None and regions.shape == (3, 8, 8, 8)
    assert regions.sum(axis=(1, 2, 3)).tolist() == [
        int((labels > 0).sum()),
        int(np.isin(labels, (1, et_label)).sum()),
        1,
    ]


def test_missing_and_ambiguous_roles_are_refused(tmp_path: Path) -> None:
    write_synthetic_case(tmp_path / "case", BRATS_2021_NAMES, 4)
    (tmp_path / "case" / "BraTS2021_00000_t1ce.nii.gz").rename(tmp_path / "case" / "x.nii.gz")
    with pytest.raises(TrainingDataError, match=r"no image for \['t1c'\]"):
        find_case(tmp_path / "case")
    write_synthetic_case(tmp_path / "twice", BRATS_2023_NAMES, 3)
    (tmp_path / "twice" / "other-t1c.nii.gz").write_bytes(b"")
    with pytest.raises(TrainingDataError, match="several files"):
        find_case(tmp_path / "twice")


def test_find_cases_walks_nested_folders_and_skips_incomplete_ones(tmp_path: Path) -> None:
    write_synthetic_case(tmp_path / "HGG" / "Brats18_A", BRATS_2021_NAMES, 4)
    write_synthetic_case(tmp_path / "LGG" / "Brats18_B", BRATS_2021_NAMES, 4)
    write_synthetic_case(tmp_path / "BraTS-GLI-1", BRATS_2023_NAMES, 3)
    (tmp_path / "BraTS-GLI-1" / "BraTS-GLI-00000-000-seg.nii.gz").unlink()
    (tmp_path / "notes").mkdir()
    (tmp_path / "notes" / "t1.nii.gz").write_bytes(b"")  # a lone image: not a case
    assert [c.case_id for c in find_cases(tmp_path)] == ["BraTS-GLI-1", "Brats18_A", "Brats18_B"]
    labelled = find_cases(tmp_path, require_label=True)
    assert [c.case_id for c in labelled] == ["Brats18_A", "Brats18_B"]


def test_normalise_nonzero_keeps_background_and_scores_the_brain() -> None:
    image = np.zeros((2, 4, 4, 4), dtype=np.float32)
    image[0, 1:3] = np.arange(32).reshape(2, 4, 4) + 10
    image[1, :, 2:] = 5.0
    image[1, 0, 2, 2] = 9.0
    out = normalise_nonzero(image)
    for channel, original in zip(out, image, strict=True):
        inside = original != 0
        assert np.all(channel[~inside] == 0)
        assert channel[inside].mean() == pytest.approx(0, abs=1e-5)
        assert channel[inside].std() == pytest.approx(1, abs=1e-4)


def test_shared_cases_are_found_by_their_own_names() -> None:
    require_nifti()
    tcga = find_case(TCGA)
    assert (tcga.t1.name, tcga.t1c.name, tcga.t2.name, tcga.flair.name) == (
        "t1.nii.gz",
        "t1c.nii.gz",
        "t2.nii.gz",
        "fla.nii.gz",
    )
    assert tcga.label is not None and tcga.label.name == "seg_fusion_mav_5algos.nii.gz"
    toolkit = find_case(TOOLKIT)
    assert (toolkit.t1.name, toolkit.flair.name) == ("t1n.nii.gz", "t2f.nii.gz")
    assert toolkit.label is not None and toolkit.label.name == "seg_algorithm.nii.gz"
    gli = find_case(GLI)
    assert gli.label is None and gli.t2.name == "BraTS-GLI-00001-000-t2w.nii.gz"
    # The native TCGA series carry the four roles but no labels; algo_segs/ is not a case.
    labelled = find_cases(NIFTI, require_label=True)
    assert sorted(case.case_id for case in labelled) == sorted([TCGA.name, TOOLKIT.name])


def test_native_series_are_refused_as_not_co_registered() -> None:
    require_nifti()
    with pytest.raises(TrainingDataError, match="not on the grid"):
        load_case(find_case(NATIVE))


@pytest.mark.parametrize(("folder", "et_label"), [(TCGA, 4), (TOOLKIT, 3)], ids=["tcga", "toolkit"])
def test_real_labels_become_nested_regions(folder: Path, et_label: int) -> None:
    require_nifti()
    case: BratsCase = find_case(folder)
    image, regions = load_case(case)
    assert image.shape == (4, 240, 240, 155) and image.dtype == np.float32
    for channel in image:
        inside = channel != 0
        assert channel[inside].mean() == pytest.approx(0, abs=1e-3)
        assert channel[inside].std() == pytest.approx(1, abs=1e-3)
    assert case.label is not None and regions is not None
    label_image = nib.load(case.label)
    assert isinstance(label_image, nib.Nifti1Image)
    labels = np.asarray(label_image.dataobj)
    wt, tc, et = regions
    assert np.all(wt >= tc) and np.all(tc >= et)  # WT ⊇ TC ⊇ ET
    assert int(wt.sum()) == int((labels > 0).sum())
    assert int(tc.sum()) == int(np.isin(labels, (1, et_label)).sum())
    assert int(et.sum()) == int((labels == et_label).sum()) > 0
