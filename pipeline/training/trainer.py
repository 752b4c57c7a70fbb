"""Training of Myronenko 2018 (sections 3.4-3.7): from BraTS case folders to a model folder.

Adam (lr 1e-4, weight decay 1e-5) with poly decay (1 − epoch/epochs)^0.9, batch 1, each
case once per epoch in random order, random crop + intensity + flip augmentation, loss
soft Dice + 0.1 L2 + 0.1 KL. Seeds fix every random draw (numpy Generator for data and
augmentation, torch for dropout and the VAE's noise); the checkpoint written after each
epoch carries all RNG states, so a resumed run continues exactly as an unbroken one would
on the same machine. On CUDA the forward pass runs under autocast (bf16 where the GPU has
it, else fp16 with a GradScaler); on CPU it stays fp32 in channels_last_3d (bf16 is about 2×
slower there, channels_last_3d 25-35 % faster: the project's stack notes).

The run's files (checkpoint, log, initial weights, the model folder the node's loader
accepts) are ``checkpoints.py``'s; its configuration is ``config.TrainConfig``; the device and
autocast type follow ``segnode.pipeline.model.device``.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from segnode.pipeline.model.device import autocast_dtype, select_device
from segnode.pipeline.model.inference import choose_roi, predict_regions
from segnode.pipeline.model.network import build_network
from segnode.pipeline.training.augmentation import random_augmentation
from segnode.pipeline.training.brats_data import BratsCase, find_case, load_case
from segnode.pipeline.training.checkpoints import (
    CHECKPOINT_NAME,
    LOG_NAME,
    append_log,
    load_initial_weights,
    restore_run,
    save_run,
    write_init_report,
    write_log,
    write_model_folder,
)
from segnode.pipeline.training.compact import cached_compact_case
from segnode.pipeline.training.config import TrainConfig, TrainingError
from segnode.pipeline.training.losses import forward_for_training, total_loss
from segnode.pipeline.training.prediction import brain_box
from segnode.vocabulary import NESTED_REGION_KEYS

log = logging.getLogger(__name__)

POLY_POWER = 0.9


@dataclass(frozen=True, slots=True)
class StepReport:
    """Handed to the progress callback after every step."""

    epoch: int
    epochs: int
    step: int
    steps: int
    case_id: str
    losses: dict[str, float]
    seconds: float


@dataclass(frozen=True, slots=True)
class TrainResult:
    model_dir: Path
    weights_path: Path
    manifest_path: Path
    checkpoint_path: Path
    log_path: Path
    first_epoch: int
    """Epoch (1-based) this run started at; > 1 after a resume."""
    epochs_completed: int
    metrics: dict[str, Any]
    history: list[dict[str, Any]] = field(default_factory=list)
    init_weights: dict[str, Any] | None = None
    """:class:`InitWeightsReport` as a dict, when the run started from a model folder."""


def poly_lr(base_lr: float, epoch: int, epochs: int) -> float:
    """Paper section 3.6: base · (1 − epoch/epochs)^0.9, epoch counted from 0."""
    return base_lr * (1.0 - epoch / epochs) ** POLY_POWER


def dice_score(prediction: np.ndarray, target: np.ndarray) -> float:
    """Binary Dice; 1.0 when both are empty (the BraTS convention)."""
    total = int(prediction.sum()) + int(target.sum())
    if total == 0:
        return 1.0
    return 2.0 * int(np.logical_and(prediction, target).sum()) / total


def validation_regions(
    network: torch.nn.Module,
    image: np.ndarray,
    device: torch.device,
    amp_dtype: torch.dtype | None = None,
) -> np.ndarray:
    """Thresholded sigmoid regions (3, X, Y, Z) of the whole volume, in eval mode, computed
    exactly as ``segnode predict --no-tta`` computes them before its post-processing.

    The brain's bounding box plus the inference margin (``prediction.brain_box``) goes through
    ``inference.predict_regions`` (centred zero padding to multiples of 8, full volume when it
    fits); outside the box the regions are 0. Why not a tighter box: a small network trained on
    one case reacts to how much empty border it sees (the reference-v1 weights score WT Dice
    0.70 on their training case without the margin, 0.53 with it), so validation must see the
    input that inference sees.
    """
    regions = np.zeros((len(NESTED_REGION_KEYS), *image.shape[1:]), dtype=bool)
    if not np.any(image != 0):
        return regions
    box = brain_box(image)
    crop = np.ascontiguousarray(image[(slice(None), *box)])
    probabilities = predict_regions(
        [network],
        crop,
        output_channels=NESTED_REGION_KEYS,
        tta=False,
        roi_size=choose_roi(crop.shape[1:]),
        device=device,
        amp_dtype=amp_dtype,
    )
    regions[(slice(None), *box)] = probabilities >= 0.5  # postprocess's threshold
    return regions


def training_step(
    network: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    scaler: torch.amp.GradScaler,
    image: torch.Tensor,
    target: torch.Tensor,
    amp_dtype: torch.dtype | None = None,
    bce_weight: float = 0.0,
) -> dict[str, float]:
    """One optimiser step on one batch; returns the loss terms before the step."""
    optimizer.zero_grad(set_to_none=True)
    with torch.autocast(
        image.device.type, dtype=amp_dtype or torch.float32, enabled=amp_dtype is not None
    ):
        logits, vae = forward_for_training(network, image)
    terms = total_loss(logits, target, image, vae, bce_weight=bce_weight)
    if not torch.isfinite(terms.total):
        raise TrainingError(f"loss is not finite ({terms.as_floats()}); lower the learning rate")
    scaler.scale(terms.total).backward()
    scaler.step(optimizer)
    scaler.update()
    return terms.as_floats()


def compact_loader(cache_dir: Path | None, factor: int) -> CaseLoader:
    """Cases from the compact cache, on the model's grid: image block means and region
    fractions (soft targets for the Dice and BCE terms) of the normalised brain box."""

    def load(case: BratsCase, channel_order: Sequence[str]) -> LoadedCase:
        compact = cached_compact_case(case, cache_dir, channel_order)
        return compact.coarse(factor)

    return load


LoadedCase = tuple[np.ndarray, np.ndarray | None]
"""(normalised image (C, X, Y, Z), regions (3, X, Y, Z) or None)."""
CaseLoader = Callable[[BratsCase, Sequence[str]], LoadedCase]
"""(case, channel order) -> (normalised image, regions); brats_data.load_case by default."""


class _CaseStore:
    """Normalised volumes by index, read once when ``cache`` is a dict (reading and
    normalising a 240×240×155 case takes ~2.5 s on 2 cores). Training and validation
    stores share the dict, so a case in both is held once."""

    def __init__(
        self,
        cases: Sequence[BratsCase],
        channel_order: Sequence[str],
        cache: dict[Path, LoadedCase] | None,
        loader: CaseLoader,
    ) -> None:
        self.cases, self.channel_order, self.cache = list(cases), channel_order, cache
        self.loader = loader

    def get(self, index: int) -> LoadedCase:
        case = self.cases[index]
        if self.cache is not None and case.folder in self.cache:
            return self.cache[case.folder]
        loaded = self.loader(case, self.channel_order)
        if self.cache is not None:
            self.cache[case.folder] = loaded
        return loaded


def train(
    config: TrainConfig,
    progress: Callable[[StepReport], None] | None = None,
    loader: CaseLoader | None = None,
) -> TrainResult:
    """Train (or resume) as configured and write the model folder under ``config.out_dir``.

    Args:
        config: the run.
        progress: called after every step (the CLI prints a line).
        loader: reads and normalises a case; tests pass a memoised one. None: the compact
            cache on the run's grid when ``cache_dir`` is set or the spacing is not 1 mm,
            else ``brats_data.load_case``.

    Raises:
        TrainingError: the output folder holds a run and ``resume`` is off, the checkpoint
            belongs to another architecture, or the loss became non-finite.
        TrainingDataError: a case folder is incomplete or its volumes are not co-registered.
    """
    checkpoint_path = config.out_dir / CHECKPOINT_NAME
    if not config.resume and (checkpoint_path.exists() or (config.out_dir / LOG_NAME).exists()):
        raise TrainingError(
            f"{config.out_dir} already holds a training run; resume it or pick another --out"
        )
    cases = config.training_cases()
    if loader is None:
        use_compact = config.cache_dir is not None or config.spacing_factor != 1
        loader = compact_loader(config.cache_dir, config.spacing_factor) if use_compact else load_case
    cache: dict[Path, LoadedCase] | None = {} if config.cache_cases else None
    store = _CaseStore(cases, config.channel_order, cache, loader)
    val_cases = [find_case(folder) for folder in config.val_cases]
    val_store = _CaseStore(val_cases, config.channel_order, cache, loader)
    device = select_device(config.device)
    config.out_dir.mkdir(parents=True, exist_ok=True)
    # Must precede the first cuBLAS call for deterministic CUDA matmuls.
    os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    previous = (
        torch.are_deterministic_algorithms_enabled(),
        torch.is_deterministic_algorithms_warn_only_enabled(),
    )
    torch.use_deterministic_algorithms(True, warn_only=True)
    try:
        run = _Run(config, device)
        for epoch in range(run.start_epoch, config.epochs):
            run.train_epoch(epoch, store, progress)
            if val_cases and ((epoch + 1) % config.val_every == 0 or epoch + 1 == config.epochs):
                run.history[-1].update(run.validate(val_store))
            run.save_checkpoint(epoch + 1)
            log.info("epoch finished", extra={"epoch": epoch + 1, "record": run.history[-1]})
    finally:
        torch.use_deterministic_algorithms(previous[0], warn_only=previous[1])
    model_dir, weights_path, manifest_path, metrics = write_model_folder(
        config, run.network, cases, run.history, [case.case_id for case in val_cases], run.init
    )
    return TrainResult(
        model_dir=model_dir,
        weights_path=weights_path,
        manifest_path=manifest_path,
        checkpoint_path=checkpoint_path,
        log_path=config.out_dir / LOG_NAME,
        first_epoch=run.start_epoch + 1,
        epochs_completed=len(run.history),
        metrics=metrics,
        history=run.history,
        init_weights=run.init,
    )


class _Run:
    """Network, optimiser, RNGs and history of one run: built fresh, or from the checkpoint."""

    def __init__(self, config: TrainConfig, device: torch.device) -> None:
        self.config, self.device = config, device
        self.amp_dtype = autocast_dtype(device) if config.amp else None
        self.memory_format = (
            torch.channels_last_3d if device.type == "cpu" else torch.contiguous_format
        )
        self.checkpoint_path = config.out_dir / CHECKPOINT_NAME
        self.log_path = config.out_dir / LOG_NAME
        torch.manual_seed(config.seed)
        self.rng = np.random.default_rng(config.seed)
        network = build_network(config.architecture())
        self.init: dict[str, Any] | None = None
        resuming = config.resume and self.checkpoint_path.exists()
        if config.init_weights is not None and not resuming:
            self.init = load_initial_weights(
                network, config.init_weights, config.channel_order
            ).as_dict()
            write_init_report(config.out_dir, self.init)
        network = network.to(device)
        # Module.to takes memory_format at run time; torch's stubs omit it.
        self.network = network.to(memory_format=self.memory_format)  # type: ignore[call-overload]
        self.optimizer = torch.optim.Adam(
            self.network.parameters(), lr=config.learning_rate, weight_decay=config.weight_decay
        )
        self.scaler = torch.amp.GradScaler(device.type, enabled=self.amp_dtype == torch.float16)
        self.history: list[dict[str, Any]] = []
        self.start_epoch = 0
        if config.resume and self.checkpoint_path.exists():
            self._restore()

    def _restore(self) -> None:
        self.history, self.start_epoch, self.init = restore_run(
            self.checkpoint_path, self, architecture=self.config.architecture().model_dump_json()
        )
        if self.config.init_weights is not None:
            log.info("resuming: --init-weights ignored, the checkpoint's weights continue")
        write_log(self.log_path, self.history)  # drop any line written after the checkpoint

    def train_epoch(
        self, epoch: int, store: _CaseStore, progress: Callable[[StepReport], None] | None
    ) -> None:
        """One pass over the cases (or max_steps_per_epoch of them) in random order."""
        config = self.config
        lr = poly_lr(config.learning_rate, epoch, config.epochs)
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        permutation = [int(i) for i in self.rng.permutation(len(store.cases))]
        size = config.batch_size
        batches = [permutation[i : i + size] for i in range(0, len(permutation), size)]
        if len(batches) > 1 and len(batches[-1]) < size:
            # A short last batch would take the slow batch-1 kernels; fill it from the front.
            batches[-1] = (batches[-1] + permutation)[:size]
        order = batches[: config.max_steps_per_epoch]
        started = time.monotonic()
        sums: dict[str, float] = {}
        self.network.train()
        for step, indices in enumerate(order):
            step_started = time.monotonic()
            case_id = "+".join(store.cases[index].case_id for index in indices)
            crops, crop_targets = [], []
            for index in indices:
                image, regions = store.get(index)
                crop, crop_regions, _ = random_augmentation(
                    image, regions, self.rng, config.crop, config.foreground_probability
                )
                if crop_regions is None:
                    raise TrainingError(
                        f"training case {store.cases[index].case_id} has no label map"
                    )
                crops.append(crop)
                crop_targets.append(crop_regions.astype(np.float32))
            losses = training_step(
                self.network,
                self.optimizer,
                self.scaler,
                torch.from_numpy(np.stack(crops)).to(self.device, memory_format=self.memory_format),
                torch.from_numpy(np.stack(crop_targets)).to(self.device),
                self.amp_dtype,
                config.bce_weight,
            )
            for key, value in losses.items():
                sums[key] = sums.get(key, 0.0) + value
            if progress is not None:
                seconds = time.monotonic() - step_started
                progress(
                    StepReport(
                        epoch + 1, config.epochs, step + 1, len(order), case_id, losses, seconds
                    )
                )
        record: dict[str, Any] = {"epoch": epoch + 1, "lr": lr, "steps": len(order)}
        record.update({key: value / len(order) for key, value in sums.items()})
        record["seconds"] = time.monotonic() - started
        self.history.append(record)

    def validate(self, store: _CaseStore) -> dict[str, Any]:
        """Mean Dice per region over the validation cases (whole volumes), each case's Dice
        (``val_by_case``: a training case and a held-out one tell different stories), and the
        seconds it took."""
        started = time.monotonic()
        scores: dict[str, list[float]] = {region: [] for region in NESTED_REGION_KEYS}
        by_case: dict[str, dict[str, float]] = {}
        for index, case in enumerate(store.cases):
            image, regions = store.get(index)
            if regions is None:
                raise TrainingError(f"validation case {case.case_id} has no label map")
            # On a coarse grid the targets are fractions: a voxel belongs to a region when most
            # of its block does (an approximation of the 1 mm score the CV reports).
            predicted = validation_regions(self.network, image, self.device, self.amp_dtype)
            for channel, region in enumerate(NESTED_REGION_KEYS):
                value = dice_score(predicted[channel], regions[channel] >= 0.5)
                scores[region].append(value)
                by_case.setdefault(case.case_id, {})[region] = value
        result: dict[str, Any] = {
            f"val_dice_{region}": float(np.mean(values)) for region, values in scores.items()
        }
        return {**result, "val_by_case": by_case, "val_seconds": time.monotonic() - started}

    def save_checkpoint(self, epochs_done: int) -> None:
        """Everything needed to continue exactly here; then the log line (log never leads)."""
        save_run(
            self.checkpoint_path,
            self,
            epochs_done=epochs_done,
            architecture=self.config.architecture().model_dump_json(),
            history=self.history,
            init=self.init,
        )
        append_log(self.log_path, self.history[-1])
