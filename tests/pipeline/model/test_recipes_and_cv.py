"""Recipes, fold lists, the 2 mm grid, the ensemble folder and the cross-validation driver.

Real BraTS cases from ``../shared/data/brats`` where the behaviour depends on real anatomy
(training lowers the loss, the CV report, the compact cache); small synthetic arrays where a
value is checked by hand (block means, the confusion matrix, the post-processing precedence).
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pytest
import torch

from segnode.pipeline.model.inference import predict_regions
from segnode.pipeline.model.manifest import ArchitectureSpec, ModelManifest, PostprocessingSpec
from segnode.pipeline.model.network import MeanOfMembers, build_network
from segnode.pipeline.model.postprocess import resolve_postprocessing
from segnode.pipeline.model.registry import load_model
from segnode.pipeline.model.resolution import block_mean, upsample
from segnode.pipeline.training.brats_data import find_case, find_cases, load_case
from segnode.pipeline.training.compact import cached_compact_case, load_compact
from segnode.pipeline.training.config import TrainConfig
from segnode.pipeline.training.cross_validation import (
    CvConfig,
    confusion_matrix,
    predict_compact,
    run_cross_validation,
)
from segnode.pipeline.training.ensemble import pack_ensemble
from segnode.pipeline.training.folds import (
    FOLDS,
    PATIENT_ALIASES,
    FoldError,
    fold_of,
    patient_of,
    split,
)
from segnode.pipeline.training.recipes import RECIPES, get_recipe, recipe_loss
from segnode.pipeline.training.trainer import train
from tests.helpers import SHARED_DATA, require_data
from tests.pipeline.model.tiny_model import write_model_folder

BRATS = SHARED_DATA / "brats"


def test_fold_lists_are_disjoint_by_patient_and_cover_the_shared_cases() -> None:
    listed = [case_id for fold in FOLDS for case_id in fold]
    assert len(listed) == len(set(listed)) == 22
    patients = [{patient_of(case_id) for case_id in fold} for fold in FOLDS]
    for i, first in enumerate(patients):
        for second in patients[i + 1 :]:
            assert not first & second
    # The other copy of BraTS20_Training_001 goes where its patient is.
    assert fold_of("brats-toolkit-preprocessed-case") == fold_of("BraTS20_Training_001") == 1
    assert set(PATIENT_ALIASES.values()) <= set(listed)
    require_data(BRATS)
    assert {case.case_id for case in find_cases(BRATS, require_label=True)} == set(listed)


def test_split_keeps_a_fold_out_and_refuses_unknown_cases() -> None:
    ids = [*FOLDS[0], *FOLDS[3], "brats-toolkit-preprocessed-case"]
    train_ids, val_ids = split(ids, 3)
    assert val_ids == list(FOLDS[3])
    assert "brats-toolkit-preprocessed-case" in train_ids and not set(train_ids) & set(val_ids)
    with pytest.raises(FoldError, match="not in the fold lists"):
        split(["somebody-else"], 0)
    with pytest.raises(FoldError, match="out of range"):
        split(ids, 5)


def test_block_mean_and_upsampling_round_trip() -> None:
    volume = np.arange(2 * 5 * 6 * 3, dtype=np.float32).reshape(2, 5, 6, 3)
    coarse = block_mean(volume, 2)
    assert coarse.shape == (2, 3, 3, 2)
    assert coarse[1, 0, 0, 0] == pytest.approx(volume[1, :2, :2, :2].mean())
    # The last block of an odd axis is padded with zeros (background), as the brain's border.
    assert coarse[0, 2, 0, 0] == pytest.approx(volume[0, 4, :2, :2].sum() / 8)
    constant = torch.full((1, 3, 4, 4, 4), 0.25)
    fine = upsample(constant, 2, (7, 8, 8))
    assert fine.shape == (1, 3, 7, 8, 8) and torch.allclose(fine, torch.tensor(0.25))


class _FirstChannels(torch.nn.Module):
    """Logits = the first three input channels: shows what the network saw."""

    def forward(self, batch: torch.Tensor) -> torch.Tensor:
        return batch[:, :3]


def _on_2mm_grid(image: np.ndarray) -> np.ndarray:
    return predict_regions(
        [_FirstChannels()],
        image,
        output_channels=("wt", "tc", "et"),
        tta=False,
        roi_size=None,
        device=torch.device("cpu"),
        amp_dtype=None,
        spacing_factor=2,
    )


def test_a_2mm_model_sees_block_means_and_answers_on_the_1mm_grid() -> None:
    rng = np.random.default_rng(0)
    image = rng.normal(size=(4, 37, 30, 21)).astype(np.float32)
    assert _on_2mm_grid(image).shape == (3, 37, 30, 21)
    # A block-constant image comes back exactly (interpolation of a constant is the constant).
    flat = np.ones((4, 32, 32, 16), dtype=np.float32)
    flat[:, :16] = -1.0
    result = _on_2mm_grid(flat)
    sigmoid = 1 / (1 + np.exp(-1.0))
    assert result[0, 20:, :, :] == pytest.approx(sigmoid, abs=1e-5)
    assert result[0, :12, :, :] == pytest.approx(1 - sigmoid, abs=1e-5)


def test_postprocessing_precedence_option_then_model_then_default() -> None:
    tuned = PostprocessingSpec(threshold=0.4, et_min_voxels=250, min_component_voxels=1000)
    assert resolve_postprocessing(None) == PostprocessingSpec()
    assert resolve_postprocessing(tuned) == tuned
    chosen = resolve_postprocessing(tuned, et_min_voxels=0)
    assert (chosen.threshold, chosen.et_min_voxels, chosen.min_component_voxels) == (0.4, 0, 1000)


def test_confusion_matrix_counts_by_hand() -> None:
    expected = np.array([0, 1, 1, 2, 4, 4, 4], dtype=np.uint8)
    predicted = np.array([0, 4, 1, 2, 1, 4, 0], dtype=np.uint8)
    matrix = confusion_matrix(predicted, expected)
    assert matrix.sum() == 7
    assert matrix.tolist() == [[1, 0, 0, 0], [0, 1, 0, 1], [0, 0, 1, 0], [1, 1, 0, 1]]


def test_ensemble_folder_is_the_mean_of_its_members(tmp_path: Path) -> None:
    members = []
    for seed in (1, 2):
        folder = tmp_path / f"member{seed}"
        write_model_folder(folder, seed=seed)
        members.append(folder)
    manifest = pack_ensemble(
        members,
        tmp_path / "ensemble",
        model_id="tiny-ensemble",
        name="two tiny members",
        version="0.0.1",
        postprocessing=PostprocessingSpec(threshold=0.45, tuned_on="test"),
        training_data="none",
        metrics={},
    )
    assert manifest.architecture.ensemble_members == 2
    loaded = load_model(tmp_path / "ensemble")  # checksum verified
    loaded_manifest, network = loaded.manifest, loaded.network
    assert isinstance(network, MeanOfMembers) and loaded_manifest.postprocessing is not None
    image = np.random.default_rng(1).normal(size=(4, 24, 24, 16)).astype(np.float32)
    kwargs = dict(
        output_channels=("wt", "tc", "et"), tta=False, roi_size=None, amp_dtype=None,
        device=torch.device("cpu"),
    )
    together = predict_regions([network], image, **kwargs)  # type: ignore[arg-type]
    # The members as shipped (float16 weights), averaged by predict_regions' own ensemble path.
    apart = predict_regions(list(network.members), image, **kwargs)  # type: ignore[arg-type]
    assert np.abs(together - apart).max() < 1e-4


def test_every_recipe_builds_and_its_loss_has_a_gradient() -> None:
    for recipe in RECIPES.values():
        network = build_network(
            recipe.architecture.model_copy(
                update={"vae_input_shape": (32, 32, 32)}
                if recipe.architecture.name == "SegResNetVAE"
                else {}
            )
        )
        image = torch.randn(2, 4, 32, 32, 32)
        target = (torch.rand(2, 3, 32, 32, 32) > 0.8).float()
        terms = recipe_loss(recipe, network, image, target)
        terms.total.backward()
        assert torch.isfinite(terms.total)
        assert (terms.bce is not None) == (recipe.bce_weight > 0)
    with pytest.raises(KeyError, match="unknown recipe"):
        get_recipe("nnunet")


def _recipe_config(tmp_path: Path, recipe_name: str, cases: list[Path], epochs: int) -> TrainConfig:
    recipe = get_recipe(recipe_name)
    return TrainConfig(
        out_dir=tmp_path / recipe_name,
        cases=tuple(cases),
        epochs=epochs,
        crop=(32, 32, 32),
        network=recipe.architecture,
        bce_weight=recipe.bce_weight,
        spacing_mm=recipe.spacing_mm,
        batch_size=2,
        foreground_probability=1.0,
        learning_rate=recipe.learning_rate,
        cache_dir=tmp_path / "cache",
        recipe=recipe.name,
        seed=3,
    )


@pytest.mark.parametrize("recipe_name", ["segresnet-bce-dice", "unet-bce-dice"])
def test_training_a_recipe_on_two_real_cases_lowers_the_loss(
    tmp_path: Path, recipe_name: str
) -> None:
    require_data(BRATS)
    cases = [BRATS / "Brats18_CBICA_AQR_1", BRATS / "Brats18_2013_2_1"]
    result = train(_recipe_config(tmp_path, recipe_name, cases, epochs=8))
    losses = [record["total"] for record in result.history]
    print(f"{recipe_name}: loss per epoch {[round(v, 3) for v in losses]}")
    assert np.mean(losses[-2:]) < losses[0]
    manifest = ModelManifest.read(result.model_dir)
    assert manifest.spacing_factor() == 2 and manifest.metrics["recipe"] == recipe_name
    # The compact cache holds the 1 mm brain box and the labels the NIfTI files give.
    cached = sorted((tmp_path / "cache").glob("Brats18_CBICA_AQR_1-*.npz"))
    assert len(cached) == 1
    compact = load_compact(cached[0])
    image, regions = load_case(find_case(cases[0]))
    box = tuple(slice(start, stop) for start, stop in compact.box)
    assert compact.regions() is not None and regions is not None
    assert np.array_equal(compact.regions(), regions[(slice(None), *box)])
    assert regions.sum() == regions[(slice(None), *box)].sum()  # no tumour outside the box
    assert np.abs(compact.image - image[(slice(None), *box)]).max() < 0.01


def test_cross_validation_reports_every_held_out_case_once(tmp_path: Path) -> None:
    require_data(BRATS)
    folds = (("Brats18_CBICA_AQR_1", "Brats18_2013_2_1"), ("Brats18_CBICA_ALU_1",))
    root = tmp_path / "cases"
    root.mkdir()
    for fold in folds:
        for case_id in fold:
            (root / case_id).symlink_to(BRATS / case_id)
    recipe = dataclasses.replace(get_recipe("unet-bce-dice"), crop=(32, 32, 32))
    config = CvConfig(
        recipe=recipe, data_root=root, out_dir=tmp_path / "cv", steps=1,
        cache_dir=tmp_path / "cache", folds=folds, tta=False,
    )
    report = run_cross_validation(config)
    assert sorted(report.by_case) == sorted(case for fold in folds for case in fold)
    assert {k: sorted(v) for k, v in report.folds.items()} == {"0": sorted(folds[0]), "1": list(folds[1])}
    assert set(report.postprocessing) == {
        "threshold", "et_threshold", "et_min_voxels", "min_component_voxels"
    }
    # The sweep's best setting, re-scored with postprocess itself, gives the same WT Dice.
    best_wt = report.sweep[0]["dice"]["wt"]
    assert np.mean([s["wt"]["dice"] for s in report.by_case.values()]) == pytest.approx(best_wt)
    boxes = [cached_compact_case(find_case(root / c), tmp_path / "cache") for c in report.by_case]
    assert np.array(report.confusion).sum() == sum(box.labels.size for box in boxes)
    # A second run trains nothing: the fold models exist.
    again = run_cross_validation(config)
    assert again.train_seconds == {"0": 0.0, "1": 0.0}
    probabilities = predict_compact(tmp_path / "cv" / "fold0" / "model", boxes[0], tta=False)
    assert probabilities.shape == (3, *boxes[0].image.shape[1:])


def test_architecture_spec_of_the_unet_recipe_round_trips() -> None:
    spec = get_recipe("unet-bce-dice").architecture
    assert ArchitectureSpec.model_validate_json(spec.model_dump_json()) == spec
