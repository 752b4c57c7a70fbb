"""The fixed five-fold split of the 22 expert-labelled BraTS training cases, by patient.

Written down rather than drawn so that every recipe in ``docs/models.md`` is scored on the
same validation cases, and a later session compares against the same numbers. Balanced by
hand: each fold holds one or two cases of each source (TCIA 2013, CBICA, TCIA01/02) and the
two low-grade TCIA10 cases (little enhancing tumour) sit in different folds.

One patient appears twice in ``../shared/data``: ``BraTS20_Training_001`` (expert label) is the
patient of ``nifti/brats-toolkit-preprocessed-case`` (an algorithm's label). ``PATIENT_ALIASES``
keeps such copies in the fold of their patient, so a copy can never be trained on while its
twin is validated.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

FOLDS: tuple[tuple[str, ...], ...] = (
    (
        "BraTS-GLI-00000-000",
        "Brats18_2013_11_1",
        "Brats18_CBICA_ABM_1",
        "Brats18_CBICA_APR_1",
        "Brats18_TCIA10_628_1",
    ),
    (
        "BraTS20_Training_001",
        "Brats18_2013_21_1",
        "Brats18_CBICA_ALU_1",
        "Brats18_CBICA_APY_1",
        "Brats18_TCIA10_639_1",
    ),
    ("Brats18_2013_2_1", "Brats18_CBICA_AMH_1", "Brats18_CBICA_APZ_1", "Brats18_TCIA01_201_1"),
    ("Brats18_CBICA_AOP_1", "Brats18_CBICA_AQP_1", "Brats18_TCIA01_425_1", "Brats18_TCIA02_135_1"),
    ("Brats18_CBICA_AOZ_1", "Brats18_CBICA_AQQ_1", "Brats18_CBICA_AQR_1", "Brats18_TCIA02_606_1"),
)

PATIENT_ALIASES: dict[str, str] = {
    "brats-toolkit-preprocessed-case": "BraTS20_Training_001",
}
"""Another folder of the same patient -> the case id its fold is listed under."""


class FoldError(ValueError):
    """A case is not in the fold lists, or a fold number is out of range."""


def patient_of(case_id: str) -> str:
    return PATIENT_ALIASES.get(case_id, case_id)


def fold_of(case_id: str, folds: Sequence[Sequence[str]] = FOLDS) -> int:
    patient = patient_of(case_id)
    for index, fold in enumerate(folds):
        if patient in fold:
            return index
    raise FoldError(f"case {case_id} is not in the fold lists (pipeline/training/folds.py)")


def split(
    case_ids: Iterable[str], fold: int, folds: Sequence[Sequence[str]] = FOLDS
) -> tuple[list[str], list[str]]:
    """(training ids, validation ids) for ``fold``: validation is that fold's cases.

    Every id must be in the fold lists (or an alias of one), so that no case silently joins
    training; ids keep their given order.
    """
    if not 0 <= fold < len(folds):
        raise FoldError(f"fold {fold} out of range 0..{len(folds) - 1}")
    train: list[str] = []
    validation: list[str] = []
    for case_id in case_ids:
        (validation if fold_of(case_id, folds) == fold else train).append(case_id)
    return train, validation


def all_case_ids(folds: Sequence[Sequence[str]] = FOLDS) -> list[str]:
    return [case_id for fold in folds for case_id in fold]
