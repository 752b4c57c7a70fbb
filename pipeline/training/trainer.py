"""Training of Myronenko 2018 (sections 3.4-3.7): from BraTS case folders to a model folder.

Adam (lr 1e-4, weight decay 1e-5) with poly decay (1 − epoch/epochs)^0.9, batch 1, each
case once per epoch in random order, random crop + intensity + flip augmentation, loss
soft Dice + 0.1 L2 + 0.1 KL. Seeds fix every random draw (numpy Generator for data and
augmentation, torch for dropout and the VAE's noise); the checkpoint written after each
epoch carries all RNG states, so a resumed run continues exactly as an unbroken one would
on the same machine. On CUDA the forward pass runs under autocast (bf16 where the GPU has
it, else fp16 with a GradScaler); on CPU it stays fp32 in channels_last_3d (bf16 is about 2×
slower there, channels_last_3d 25-35 % faster: the project's stack notes).

The result is a model folder (``model.pt`` + ``manifest.json`` with the weights' sha256)
that the node's model loader accepts.

Fine-tuning: ``init_weights`` names a model folder whose (checksum-verified, possibly float16,
possibly VAE-less) weights start the run. The encoder-decoder parameters must all load; the VAE
branch starts fresh when the folder holds an inference export (SegResNet), and the model's id and
sha256 are recorded in the new manifest.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from segnode.pipeline.model.errors import ModelError
from segnode.pipeline.model.inference import choose_roi, predict_regions
from segnode.pipeline.model.labels import REGIONS
from segnode.pipeline.model.loading import load_verified_weights, read_manifest
from segnode.pipeline.model.manifest import (
    DEFAULT_PREPROCESSING,
    MANIFEST_FILE,
    ROLES,
    ArchitectureSpec,
    ModelManifest,
)
from segnode.pipeline.model.network import build_network
from segnode.pipeline.training.augmentation import PAPER_CROP, Shape3, random_augmentation
from segnode.pipeline.training.brats_data import BratsCase, find_case, find_cases, load_case
from segnode.pipeline.training.compact import cached_compact_case
from segnode.pipeline.training.export import VAE_PREFIX
from segnode.pipeline.training.losses import forward_for_training, total_loss
from segnode.pipeline.training.prediction import brain_box

log = logging.getLogger(__name__)

POLY_POWER = 0.9
CHECKPOINT_NAME = "checkpoint.pt"
LOG_NAME = "train_log.jsonl"
MODEL_DIR_NAME = "model"
INIT_REPORT_NAME = "init_weights.json"
CHECKPOINT_FORMAT = 1


class TrainingError(ModelError):
    """Training cannot start or continue (bad configuration, checkpoint mismatch, NaN loss)."""


@dataclass(frozen=True, slots=True)
class TrainConfig:
    """One training run; validated on construction."""

    out_dir: Path
    cases: tuple[Path, ...] = ()
    """Case folders (see brats_data.find_case)."""
    data_roots: tuple[Path, ...] = ()
    """Folders searched for labelled cases (brats_data.find_cases)."""
    val_cases: tuple[Path, ...] = ()
    val_every: int = 1
    """Validate after every n-th epoch and after the last (whole volumes: ~5 s a case on CPU)."""
    epochs: int = 300
    crop: Shape3 = PAPER_CROP
    init_filters: int = 32
    vae: bool = True
    """SegResNetVAE (the paper) or plain SegResNet."""
    seed: int = 0
    resume: bool = False
    device: str | None = None
    """'cpu', 'cuda', 'cuda:1'; None picks CUDA when present."""
    max_steps_per_epoch: int | None = None
    fp16_weights: bool = False
    amp: bool = True
    """Mixed precision on CUDA (ignored on CPU)."""
    learning_rate: float = 1e-4
    weight_decay: float = 1e-5
    channel_order: tuple[str, ...] = ROLES
    foreground_probability: float = 0.0
    """Share of crops centred on tumour (augmentation.py); 0 is the paper's uniform crop."""
    cache_cases: bool = True
    """Keep the normalised volumes in memory (~140 MB per case)."""
    model_id: str | None = None
    model_version: str = "0.1.0"
    training_data_note: str = ""
    init_weights: Path | None = None
    """A model folder whose weights start the run (fine-tuning); ignored on resume, where the
    checkpoint's weights continue. See :func:`load_initial_weights`."""
    network: ArchitectureSpec | None = None
    """The whole architecture (a recipe's: ``segnode.pipeline.training.recipes``); None builds SegResNet
    or SegResNetVAE from ``init_filters`` and ``vae``. A SegResNetVAE's VAE input shape is
    always the crop."""
    bce_weight: float = 0.0
    """Weight of a BCE term added to the soft Dice (``losses.total_loss``); 0 is the paper."""
    spacing_mm: float = 1.0
    """Grid the network trains and predicts on; 2.0 trains on 2 mm block means of the 1 mm
    cases (``segnode.pipeline.model.resolution``) and the manifest tells inference to do the same."""
    batch_size: int = 1
    """Crops per step. On CPU, batch 2 is ~2x faster per crop than batch 1: PyTorch sends a
    batch-1 3D convolution with a small input to its slow native kernel instead of oneDNN
    (``bench/train_step.py``)."""
    cache_dir: Path | None = None
    """Folder for compact brain-cropped cases (``segnode.pipeline.training.compact``); None reads NIfTI."""
    recipe: str | None = None
    """Name of the recipe the run follows, recorded in the manifest."""

    def __post_init__(self) -> None:
        if not self.cases and not self.data_roots:
            raise TrainingError("no training data: give case folders or data roots")
        if self.val_every < 1:
            raise TrainingError(f"val_every must be >= 1, got {self.val_every}")
        if self.epochs < 1:
            raise TrainingError(f"epochs must be >= 1, got {self.epochs}")
        if self.batch_size < 1:
            raise TrainingError(f"batch_size must be >= 1, got {self.batch_size}")
        if self.bce_weight < 0:
            raise TrainingError(f"bce_weight must be >= 0, got {self.bce_weight}")
        if self.spacing_mm < 1 or self.spacing_mm != round(self.spacing_mm):
            raise TrainingError(f"spacing_mm must be a whole number >= 1, got {self.spacing_mm}")
        multiple = 16 if self.uses_vae else 8
        if any(n < multiple or n % multiple for n in self.crop):
            raise TrainingError(
                f"crop {self.crop}: each side must be a multiple of {multiple} "
                f"({'the VAE branch halves 4 times' if self.uses_vae else 'the encoder halves 3 times'})"
            )
        if self.init_filters < 8 or self.init_filters % 8:
            raise TrainingError(
                f"init_filters {self.init_filters}: GroupNorm(8) needs a multiple of 8"
            )
        if self.max_steps_per_epoch is not None and self.max_steps_per_epoch < 1:
            raise TrainingError("max_steps_per_epoch must be >= 1")
        if not 0.0 <= self.foreground_probability <= 1.0:
            raise TrainingError(
                f"foreground_probability {self.foreground_probability} not in [0, 1]"
            )
        if sorted(self.channel_order) != sorted(ROLES):
            raise TrainingError(f"channel_order must be a permutation of {ROLES}")

    @property
    def uses_vae(self) -> bool:
        return self.architecture().name == "SegResNetVAE"

    @property
    def spacing_factor(self) -> int:
        return int(round(self.spacing_mm))

    def architecture(self) -> ArchitectureSpec:
        if self.network is not None:
            if self.network.name == "SegResNetVAE":
                return self.network.model_copy(update={"vae_input_shape": self.crop})
            return self.network
        return ArchitectureSpec(
            name="SegResNetVAE" if self.vae else "SegResNet",
            init_filters=self.init_filters,
            vae_input_shape=self.crop if self.vae else None,
        )


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


@dataclass(frozen=True, slots=True)
class InitWeightsReport:
    """What :func:`load_initial_weights` loaded into the network being trained."""

    model_id: str
    weights_sha256: str
    folder: str
    loaded: int
    """Parameters and buffers copied from the model folder."""
    missing: tuple[str, ...]
    """In the network, not loaded (the VAE branch, which starts fresh)."""
    unexpected: tuple[str, ...]
    """In the weights file, not loaded (unknown to the network, or a VAE tensor whose shape
    belongs to another training crop)."""

    def as_dict(self) -> dict[str, Any]:
        return {
            "model_id": self.model_id,
            "weights_sha256": self.weights_sha256,
            "folder": self.folder,
            "loaded": self.loaded,
            "missing": list(self.missing),
            "unexpected": list(self.unexpected),
        }


def load_initial_weights(
    network: torch.nn.Module, folder: Path, channel_order: Sequence[str] = ROLES
) -> InitWeightsReport:
    """Copy a model folder's weights into ``network`` (float32) for fine-tuning.

    Non-strict for the VAE branch only: every parameter of the segmentation path (all keys
    not starting with ``vae_``) must be present with the network's shape, else nothing is
    loaded. VAE tensors of another shape (trained on another crop) are skipped and reported.

    Raises:
        TrainingError: the folder's input channels or outputs differ from the run's, or a
            segmentation-path parameter is missing or of another shape.
        ModelError: no valid manifest, or the weights fail their checksum (``segnode.pipeline.model.
            loading``).
    """
    manifest = read_manifest(folder)
    where = f"--init-weights {folder} (model {manifest.id})"
    if tuple(manifest.input_channels) != tuple(channel_order):
        raise TrainingError(
            f"{where} takes channels {list(manifest.input_channels)}, this run feeds "
            f"{list(channel_order)}"
        )
    if tuple(manifest.output_channels) != REGIONS:
        raise TrainingError(
            f"{where} outputs {list(manifest.output_channels)}; training needs {list(REGIONS)}"
        )
    state = load_verified_weights(folder, manifest)  # checksum-verified bytes
    expected = network.state_dict()
    wrong_shape = [
        name
        for name, tensor in state.items()
        if name in expected and tensor.shape != expected[name].shape
    ]
    not_loadable = [
        name
        for name in expected
        if not name.startswith(VAE_PREFIX) and (name not in state or name in wrong_shape)
    ]
    if not_loadable:
        shown = ", ".join(not_loadable[:5])
        raise TrainingError(
            f"{where}: {len(not_loadable)} parameter(s) of the segmentation path are missing or "
            f"of another shape ({shown}{', ...' if len(not_loadable) > 5 else ''}); the model's "
            f"architecture ({manifest.architecture.name}, {manifest.architecture.init_filters} "
            f"filters) must match the run's (--filters)"
        )
    usable = {
        name: tensor.float() if tensor.is_floating_point() else tensor
        for name, tensor in state.items()
        if name in expected and name not in wrong_shape
    }
    result = network.load_state_dict(usable, strict=False)
    unexpected = sorted([*result.unexpected_keys, *(n for n in state if n not in expected)])
    report = InitWeightsReport(
        model_id=manifest.id,
        weights_sha256=manifest.weights_sha256,
        folder=str(folder),
        loaded=len(usable),
        missing=tuple(result.missing_keys),
        unexpected=tuple(sorted({*unexpected, *wrong_shape})),
    )
    log.info("initial weights loaded", extra={"init_weights": report.as_dict()})
    return report


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
    regions = np.zeros((len(REGIONS), *image.shape[1:]), dtype=bool)
    if not np.any(image != 0):
        return regions
    box = brain_box(image)
    crop = np.ascontiguousarray(image[(slice(None), *box)])
    probabilities = predict_regions(
        [network],
        crop,
        output_channels=REGIONS,
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


def _resolve_cases(config: TrainConfig) -> list[BratsCase]:
    found = [find_case(folder) for folder in config.cases]
    for root in config.data_roots:
        found.extend(find_cases(root, require_label=True))
    # A case named twice (a folder and its root) would be trained twice per epoch.
    by_folder = {case.folder.resolve(): case for case in reversed(found)}
    cases = [case for case in found if by_folder[case.folder.resolve()] is case]
    unlabelled = [case.case_id for case in cases if case.label is None]
    if unlabelled:
        raise TrainingError(f"training cases without a label map: {unlabelled}")
    if not cases:
        raise TrainingError(f"no labelled cases found under {list(config.data_roots)}")
    return cases


def _select_device(config: TrainConfig) -> torch.device:
    if config.device is not None:
        try:
            device = torch.device(config.device)
        except RuntimeError as exc:
            raise TrainingError(
                f"unknown device {config.device!r}: use cpu, cuda or cuda:N"
            ) from exc
        if device.type == "cuda" and not torch.cuda.is_available():
            raise TrainingError(f"device {config.device} asked for, but CUDA is not available")
        return device
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def _amp_dtype(config: TrainConfig, device: torch.device) -> torch.dtype | None:
    if device.type != "cuda" or not config.amp:
        return None
    return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16


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


def _save_checkpoint(path: Path, state: Mapping[str, Any]) -> None:
    temporary = path.with_suffix(".tmp")
    torch.save(state, temporary)
    os.replace(temporary, path)  # a crash mid-write leaves the previous checkpoint intact


def _write_log(path: Path, history: list[dict[str, Any]]) -> None:
    path.write_text("".join(json.dumps(record) + "\n" for record in history))


def _write_model_folder(
    config: TrainConfig,
    network: torch.nn.Module,
    cases: Sequence[BratsCase],
    history: list[dict[str, Any]],
    val_ids: list[str],
    init: dict[str, Any] | None = None,
) -> tuple[Path, Path, Path, dict[str, Any]]:
    model_dir = config.out_dir / MODEL_DIR_NAME
    model_dir.mkdir(parents=True, exist_ok=True)
    dtype = torch.float16 if config.fp16_weights else torch.float32
    state = {
        key: (value.to(dtype) if value.is_floating_point() else value).detach().cpu().contiguous()
        for key, value in network.state_dict().items()
    }
    weights_path = model_dir / "model.pt"
    _save_checkpoint(weights_path, state)  # atomic: never a half-written model.pt
    digest = hashlib.sha256(weights_path.read_bytes()).hexdigest()
    last = history[-1] if history else {}
    train_ids = [case.case_id for case in cases]
    metrics: dict[str, Any] = {
        "epochs": len(history),
        "steps": int(sum(record["steps"] for record in history)),
        "train_seconds": float(sum(record["seconds"] for record in history)),
        "final_loss": {key: last[key] for key in ("dice", "l2", "kl", "total") if key in last},
        "crop": list(config.crop),
        "seed": config.seed,
        "batch_size": config.batch_size,
        "bce_weight": config.bce_weight,
        "recipe": config.recipe,
    }
    if val_ids:
        metrics["validation"] = {
            "cases": val_ids,
            "overlaps_training": bool(set(val_ids) & set(train_ids)),
            **{region: last.get(f"val_dice_{region}") for region in REGIONS},
            "by_case": last.get("val_by_case"),
        }
    description = f"{len(train_ids)} case(s): {', '.join(train_ids)}"
    if init is not None:
        metrics["init_weights"] = {
            key: init[key] for key in ("model_id", "weights_sha256", "loaded", "missing")
        } | {"unexpected": init["unexpected"]}
        description += (
            f"; fine-tuned from model {init['model_id']} (weights sha256 {init['weights_sha256']})"
        )
    manifest = ModelManifest(
        id=config.model_id
        or f"segresnet{'vae' if config.vae else ''}-{config.init_filters}f-trained",
        name=f"{config.architecture().name} trained by segnode "
        f"({'recipe ' + config.recipe if config.recipe else 'Myronenko 2018 recipe'})",
        version=config.model_version,
        architecture=config.architecture(),
        preprocessing={**DEFAULT_PREPROCESSING, "spacing_mm": config.spacing_mm},
        input_channels=config.channel_order,
        weights_sha256=digest,
        weights_dtype="float16" if config.fp16_weights else "float32",
        training_data=f"{description}. {config.training_data_note}".strip(),
        metrics=metrics,
    )
    manifest.write(model_dir)
    return model_dir, weights_path, model_dir / MANIFEST_FILE, metrics


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
    cases = _resolve_cases(config)
    if loader is None:
        use_compact = config.cache_dir is not None or config.spacing_factor != 1
        loader = compact_loader(config.cache_dir, config.spacing_factor) if use_compact else load_case
    cache: dict[Path, LoadedCase] | None = {} if config.cache_cases else None
    store = _CaseStore(cases, config.channel_order, cache, loader)
    val_cases = [find_case(folder) for folder in config.val_cases]
    val_store = _CaseStore(val_cases, config.channel_order, cache, loader)
    device = _select_device(config)
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
    model_dir, weights_path, manifest_path, metrics = _write_model_folder(
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
        self.amp_dtype = _amp_dtype(config, device)
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
            (config.out_dir / INIT_REPORT_NAME).write_text(json.dumps(self.init, indent=2) + "\n")
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
        state = torch.load(self.checkpoint_path, map_location=self.device, weights_only=True)
        if state["architecture"] != self.config.architecture().model_dump_json():
            raise TrainingError(
                f"{self.checkpoint_path} was trained with another architecture: "
                f"{state['architecture']}; resume with the same --filters/--crop/--vae"
            )
        self.network.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.scaler.load_state_dict(state["scaler"])
        self.rng.bit_generator.state = state["numpy_rng"]
        torch.set_rng_state(state["torch_rng"].cpu())
        if self.device.type == "cuda" and state["cuda_rng"]:
            torch.cuda.set_rng_state_all([s.cpu() for s in state["cuda_rng"]])
        self.history, self.start_epoch = list(state["history"]), int(state["epoch"])
        self.init = state.get("init_weights")
        if self.config.init_weights is not None:
            log.info("resuming: --init-weights ignored, the checkpoint's weights continue")
        _write_log(self.log_path, self.history)  # drop any line written after the checkpoint

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
        scores: dict[str, list[float]] = {region: [] for region in REGIONS}
        by_case: dict[str, dict[str, float]] = {}
        for index, case in enumerate(store.cases):
            image, regions = store.get(index)
            if regions is None:
                raise TrainingError(f"validation case {case.case_id} has no label map")
            # On a coarse grid the targets are fractions: a voxel belongs to a region when most
            # of its block does (an approximation of the 1 mm score the CV reports).
            predicted = validation_regions(self.network, image, self.device, self.amp_dtype)
            for channel, region in enumerate(REGIONS):
                value = dice_score(predicted[channel], regions[channel] >= 0.5)
                scores[region].append(value)
                by_case.setdefault(case.case_id, {})[region] = value
        result: dict[str, Any] = {
            f"val_dice_{region}": float(np.mean(values)) for region, values in scores.items()
        }
        return {**result, "val_by_case": by_case, "val_seconds": time.monotonic() - started}

    def save_checkpoint(self, epochs_done: int) -> None:
        """Everything needed to continue exactly here; then the log line (log never leads)."""
        _save_checkpoint(
            self.checkpoint_path,
            {
                "format": CHECKPOINT_FORMAT,
                "epoch": epochs_done,
                "model": self.network.state_dict(),
                "optimizer": self.optimizer.state_dict(),
                "scaler": self.scaler.state_dict(),
                "numpy_rng": self.rng.bit_generator.state,
                "torch_rng": torch.get_rng_state(),
                "cuda_rng": torch.cuda.get_rng_state_all() if self.device.type == "cuda" else [],
                "architecture": self.config.architecture().model_dump_json(),
                "history": self.history,
                "init_weights": self.init,
            },
        )
        with self.log_path.open("a") as handle:
            handle.write(json.dumps(self.history[-1]) + "\n")
