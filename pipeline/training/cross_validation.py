"""Five-fold cross-validation of one recipe on the labelled cases: the numbers in docs/models.md.

For each fold of ``segnode.pipeline.training.folds`` a model is trained on the other folds
(``training.train``) and the fold's cases are segmented exactly as ``segnode predict`` does
(brain box, ``inference.predict_regions`` with TTA on the model's grid, ``postprocess``). The
probabilities are kept, so the post-processing (threshold, small-ET rule, small components) is
chosen on all validation predictions together, never on a case that trained the model; then
Dice and HD95 per region and the confusion matrix of labels are reported with the chosen
values. A fold whose model folder exists is not trained again: an interrupted run resumes.
"""

from __future__ import annotations

import json
import logging
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from scipy import ndimage

from segnode.pipeline.model.device import autocast_dtype, select_device
from segnode.pipeline.model.inference import choose_roi, predict_regions
from segnode.pipeline.model.labels import labels_to_regions
from segnode.pipeline.model.manifest import ModelManifest
from segnode.pipeline.model.postprocess import postprocess
from segnode.pipeline.model.registry import load_model
from segnode.pipeline.model.resolution import coarse_shape
from segnode.pipeline.training.brats_data import BratsCase, find_cases
from segnode.pipeline.training.checkpoints import MODEL_DIR_NAME
from segnode.pipeline.training.compact import CompactCase, cached_compact_case
from segnode.pipeline.training.config import TrainConfig
from segnode.pipeline.training.evaluation import RegionScores, evaluate_pair
from segnode.pipeline.training.folds import FOLDS, split
from segnode.pipeline.training.recipes import Recipe
from segnode.pipeline.training.trainer import StepReport, dice_score, train
from segnode.vocabulary import NESTED_REGION_KEYS, LabelConvention

log = logging.getLogger(__name__)

THRESHOLDS = (0.3, 0.4, 0.5, 0.55, 0.6, 0.65, 0.7, 0.75, 0.8, 0.85, 0.9)
ET_MIN_VOXELS = (0, 100, 250, 500, 1000)
MIN_COMPONENT_VOXELS = (0, 200, 1000, 3000, 10000)
PROBABILITIES_DIR = "probabilities"
"""Per fold folder: each held-out case's probabilities (float16 npz), so that a changed sweep
re-scores a run without predicting again."""
LABEL_NAMES = ("background", "NCR", "ED", "ET")
"""Rows (expert) and columns (predicted) of the confusion matrix, 2021 label values 0, 1, 2, 4."""
_LABEL_VALUES = (0, 1, 2, 4)
REPORT_NAME = "cv_report.json"


@dataclass(frozen=True, slots=True)
class CvConfig:
    recipe: Recipe
    data_root: Path
    out_dir: Path
    steps: int
    """Optimiser steps per fold model (batches of ``batch_size`` crops)."""
    batch_size: int = 2
    cache_dir: Path | None = None
    seed: int = 0
    folds: tuple[tuple[str, ...], ...] = FOLDS
    only_folds: tuple[int, ...] | None = None
    tta: bool = True


@dataclass(slots=True)
class _Prediction:
    case_id: str
    fold: int
    probabilities: np.ndarray
    """(3, X, Y, Z) float16 on the 1 mm brain box."""
    labels: np.ndarray
    """Expert labels, 2021 convention, same box."""


@dataclass(slots=True)
class CvReport:
    recipe: str
    steps: int
    postprocessing: dict[str, Any]
    by_case: dict[str, dict[str, RegionScores]] = field(default_factory=dict)
    folds: dict[str, list[str]] = field(default_factory=dict)
    confusion: list[list[int]] = field(default_factory=list)
    sweep: list[dict[str, Any]] = field(default_factory=list)
    train_seconds: dict[str, float] = field(default_factory=dict)

    def summary(self) -> dict[str, dict[str, float]]:
        """Mean and sd of Dice and HD95 per region over the cases."""
        result: dict[str, dict[str, float]] = {}
        for region in NESTED_REGION_KEYS:
            dice = [scores[region]["dice"] for scores in self.by_case.values()]
            hd95 = [scores[region]["hd95"] for scores in self.by_case.values()]
            result[region] = {
                "dice_mean": float(np.mean(dice)),
                "dice_sd": float(np.std(dice, ddof=1)) if len(dice) > 1 else 0.0,
                "hd95_mean": float(np.mean(hd95)),
                "hd95_sd": float(np.std(hd95, ddof=1)) if len(hd95) > 1 else 0.0,
            }
        return result

    def as_dict(self) -> dict[str, Any]:
        return {
            "recipe": self.recipe,
            "steps": self.steps,
            "postprocessing": self.postprocessing,
            "summary": self.summary(),
            "confusion": {"labels": list(LABEL_NAMES), "rows_expert_cols_predicted": self.confusion},
            "by_case": self.by_case,
            "folds": self.folds,
            "train_seconds": self.train_seconds,
            "sweep_best": self.sweep[:10],
        }


def confusion_matrix(predicted: np.ndarray, expected: np.ndarray) -> np.ndarray:
    """4x4 voxel counts, rows expert, columns predicted, over background, NCR, ED, ET
    (both maps in the 2021 convention)."""
    lookup = np.full(256, 0, dtype=np.int64)
    for index, value in enumerate(_LABEL_VALUES):
        lookup[value] = index
    pairs = lookup[expected.ravel()] * 4 + lookup[predicted.ravel()]
    return np.bincount(pairs, minlength=16).reshape(4, 4)


def _fold_epochs(steps: int, train_cases: int, batch_size: int) -> int:
    per_epoch = max(1, math.ceil(train_cases / batch_size))
    return max(1, math.ceil(steps / per_epoch))


def _train_fold(
    config: CvConfig,
    fold: int,
    cases: Sequence[BratsCase],
    progress: Callable[[StepReport], None] | None,
) -> tuple[Path, float]:
    fold_dir = config.out_dir / f"fold{fold}"
    model_dir = fold_dir / MODEL_DIR_NAME
    if (model_dir / "manifest.json").exists():
        log.info("fold model exists, not trained again", extra={"fold": fold})
        return model_dir, 0.0
    recipe = config.recipe
    epochs = _fold_epochs(config.steps, len(cases), config.batch_size)
    started = time.monotonic()
    train(
        TrainConfig(
            out_dir=fold_dir,
            cases=tuple(case.folder for case in cases),
            epochs=epochs,
            crop=recipe.crop,
            network=recipe.architecture,
            bce_weight=recipe.bce_weight,
            spacing_mm=recipe.spacing_mm,
            batch_size=config.batch_size,
            foreground_probability=recipe.foreground_probability,
            learning_rate=recipe.learning_rate,
            seed=config.seed + fold,
            cache_dir=config.cache_dir,
            resume=True,
            recipe=recipe.name,
            model_id=f"cv-{recipe.name}-fold{fold}",
            fp16_weights=True,
            training_data_note=f"cross-validation fold {fold} held out",
        ),
        progress=progress,
    )
    return model_dir, time.monotonic() - started


def predict_compact(
    model_dir: Path, compact: CompactCase, *, tta: bool = True, device: str = "cpu"
) -> np.ndarray:
    """Region probabilities (3, X, Y, Z) on the case's 1 mm brain box, as ``segnode predict``
    computes them before post-processing."""
    on = select_device(device)
    loaded = load_model(model_dir, on)
    manifest = loaded.manifest
    if tuple(manifest.input_channels) != compact.channel_order:
        order = [compact.channel_order.index(role) for role in manifest.input_channels]
        image = compact.image[order]
    else:
        image = compact.image
    factor = manifest.spacing_factor()
    image32 = np.ascontiguousarray(image, dtype=np.float32)
    return predict_regions(
        [loaded.network],
        image32,
        output_channels=manifest.output_channels,
        tta=tta,
        roi_size=choose_roi(coarse_shape(image32.shape[1:], factor)),
        device=on,
        amp_dtype=autocast_dtype(on),
        spacing_factor=factor,
    )


def _sweep(predictions: Sequence[_Prediction]) -> list[dict[str, Any]]:
    """Mean Dice per region for every post-processing setting, best (sum of means) first.

    Computes what ``postprocess.postprocess`` would give for each setting without running it
    ~1,200 times per case: per WT/TC threshold the whole-tumour components are labelled once,
    each component-size floor is a mask of them, the ET threshold only re-cuts ET inside TC,
    and the small-ET rule only empties ET (its voxels stay in TC as necrosis).
    ``run_cross_validation`` then scores the winner with ``postprocess`` itself.
    """
    structure = np.ones((3, 3, 3), dtype=bool)
    # (threshold, et_threshold, min_component, et_min) -> region -> Dice per case
    sums: dict[tuple[float, float, int, int], dict[str, list[float]]] = {}
    for item in predictions:
        want = labels_to_regions(item.labels)
        probabilities = item.probabilities.astype(np.float32)
        et_cuts = {cut: probabilities[2] >= cut for cut in THRESHOLDS}
        for threshold in THRESHOLDS:
            wt = probabilities[0] >= threshold
            tc = (probabilities[1] >= threshold) & wt
            components, count = ndimage.label(wt, structure=structure)
            sizes = np.bincount(components.ravel())
            for min_component in MIN_COMPONENT_VOXELS:
                if min_component and count:
                    small = sizes < min_component
                    small[0] = False
                    keep = ~small[components]
                    wt_m, tc_m = wt & keep, tc & keep
                else:
                    wt_m, tc_m = wt, tc
                dice_wt = dice_score(wt_m, want[0])
                dice_tc = dice_score(tc_m, want[1])
                dice_no_et = dice_score(np.zeros_like(wt_m), want[2])
                for et_threshold, et_cut in et_cuts.items():
                    et_m = et_cut & tc_m
                    et_voxels = int(et_m.sum())
                    dice_et = dice_score(et_m, want[2])
                    for et_min in ET_MIN_VOXELS:
                        relabel = bool(et_min) and 0 < et_voxels < et_min
                        key = (threshold, et_threshold, min_component, et_min)
                        row = sums.setdefault(key, {region: [] for region in NESTED_REGION_KEYS})
                        row["wt"].append(dice_wt)
                        row["tc"].append(dice_tc)
                        row["et"].append(dice_no_et if relabel else dice_et)
    results: list[dict[str, Any]] = []
    for (threshold, et_threshold, min_component, et_min), scores in sums.items():
        means = {region: float(np.mean(values)) for region, values in scores.items()}
        results.append(
            {
                "threshold": threshold,
                "et_threshold": et_threshold,
                "et_min_voxels": et_min,
                "min_component_voxels": min_component,
                "dice": means,
                "sum": sum(means.values()),
            }
        )
    results.sort(key=lambda row: -row["sum"])
    return results


def run_cross_validation(
    config: CvConfig,
    progress: Callable[[StepReport], None] | None = None,
    on_fold: Callable[[int, str], None] | None = None,
) -> CvReport:
    """Train, predict and score every fold; writes ``cv_report.json`` under ``out_dir``."""
    found = {case.case_id: case for case in find_cases(config.data_root, require_label=True)}
    listed = {case_id for fold in config.folds for case_id in fold}
    # Cases outside the fold lists (another data set in the same folder) are not used at all.
    cases = {case_id: case for case_id, case in found.items() if case_id in listed}
    missing = [case_id for fold in config.folds for case_id in fold if case_id not in cases]
    if missing:
        raise FileNotFoundError(f"fold cases missing under {config.data_root}: {missing}")
    config.out_dir.mkdir(parents=True, exist_ok=True)
    report = CvReport(recipe=config.recipe.name, steps=config.steps, postprocessing={})
    predictions: list[_Prediction] = []
    fold_numbers = config.only_folds or tuple(range(len(config.folds)))
    for fold in fold_numbers:
        train_ids, val_ids = split(cases, fold, config.folds)
        report.folds[str(fold)] = val_ids
        if on_fold is not None:
            on_fold(fold, f"training on {len(train_ids)} cases, validating {len(val_ids)}")
        model_dir, seconds = _train_fold(config, fold, [cases[i] for i in train_ids], progress)
        report.train_seconds[str(fold)] = seconds
        for case_id in val_ids:
            compact = cached_compact_case(cases[case_id], config.cache_dir)
            if compact.labels is None:
                raise ValueError(f"validation case {case_id} has no labels")
            # Keyed by the weights' checksum: a retrained fold never reuses old predictions.
            sha = ModelManifest.read(model_dir).weights_sha256[:16]
            name = f"{case_id}-{sha}-tta{int(config.tta)}.npz"
            saved = model_dir.parent / PROBABILITIES_DIR / name
            if saved.is_file():
                with np.load(saved) as data:
                    probabilities = data["probabilities"]
            else:
                probabilities = predict_compact(model_dir, compact, tta=config.tta)
                probabilities = probabilities.astype(np.float16)
                saved.parent.mkdir(parents=True, exist_ok=True)
                np.savez_compressed(saved, probabilities=probabilities)
            predictions.append(_Prediction(case_id, fold, probabilities, compact.labels))
    report.sweep = _sweep(predictions)
    best = report.sweep[0]
    report.postprocessing = {
        key: best[key]
        for key in ("threshold", "et_threshold", "et_min_voxels", "min_component_voxels")
    }
    confusion = np.zeros((4, 4), dtype=np.int64)
    for item in predictions:
        labels, _ = postprocess(
            item.probabilities.astype(np.float32),
            threshold=best["threshold"],
            et_threshold=best["et_threshold"],
            et_min_voxels=best["et_min_voxels"] or None,
            min_component_voxels=best["min_component_voxels"] or None,
            convention=LabelConvention.BRATS_2021,
        )
        report.by_case[item.case_id] = evaluate_pair(labels, item.labels, (1.0, 1.0, 1.0))
        confusion += confusion_matrix(labels, item.labels)
    report.confusion = confusion.tolist()
    (config.out_dir / REPORT_NAME).write_text(json.dumps(report.as_dict(), indent=2) + "\n")
    return report
