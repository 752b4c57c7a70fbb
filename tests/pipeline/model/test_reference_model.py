"""The shipped reference weights: verified, labelled for research only, and trained for real.

The acceptance bar of the training path (issue 4): the reference model reaches WT Dice >= 0.8
on its training case (TCGA-FG-6692, silver labels: a 5-algorithm majority vote).
"""

from __future__ import annotations

from pathlib import Path

import nibabel as nib
import numpy as np

from pipeline.model.evaluation import evaluate_pair
from pipeline.model.prediction import predict_case
from pipeline.model.registry import BUILTIN_MODELS, node_registry
from tests.helpers import SHARED_DATA, require_data

REFERENCE = "segnode-reference-v1"
TRAINING_CASE = SHARED_DATA / "nifti" / "TCGA-FG-6692_sri24_skullstripped"


def test_reference_model_is_built_in_verified_and_not_for_clinical_use(tmp_path: Path) -> None:
    registry = node_registry(tmp_path)
    assert REFERENCE in registry.ids()
    manifest = registry.get(REFERENCE)
    assert registry.verify(REFERENCE) == manifest.weights_sha256
    assert "not for clinical use" in manifest.intended_use.lower()
    card = (BUILTIN_MODELS / REFERENCE / "MODEL_CARD.md").read_text()
    assert "NOT FOR CLINICAL USE" in card and "TCGA-FG-6692" in card
    assert (BUILTIN_MODELS / REFERENCE / "model.pt").stat().st_size < 20 * 2**20


def test_reference_model_reaches_wt_dice_on_its_training_case(tmp_path: Path) -> None:
    require_data(TRAINING_CASE)
    summary = predict_case(
        TRAINING_CASE, tmp_path / "labels.nii.gz", BUILTIN_MODELS / REFERENCE, tta=False
    )
    predicted = np.asarray(nib.load(summary.output).dataobj)
    reference = nib.load(TRAINING_CASE / "seg_fusion_mav_5algos.nii.gz")
    # Plain floats: MONAI's HD95 refuses numpy float32 spacing (get_zooms' type) with a
    # ValueError, which the strict xfail this test carried used to swallow.
    spacing = tuple(float(size) for size in reference.header.get_zooms()[:3])
    scores = evaluate_pair(predicted, np.asarray(reference.dataobj), spacing)
    print(f"reference model on its training case: {scores}")
    assert scores["wt"]["dice"] >= 0.8
