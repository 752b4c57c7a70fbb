"""Weights in and out of a training run: initial weights, the checkpoint, the model folder.

Why apart from the loop (``trainer.py``): these are the run's files, and each has a reader
elsewhere that must never see half of one. The checkpoint (``checkpoint.pt``) is what
``--resume`` continues from, the log (``train_log.jsonl``) never runs ahead of it, and the
model folder (``model/``: ``model.pt`` and ``manifest.json`` with the weights' sha256) is what
the node's loader accepts; all are written with ``segnode.files.atomic_write``. Initial
weights (``--init-weights``) come through the node's own loader
(``segnode.pipeline.model.registry.load_model``), so they pass the same checks.
"""

from __future__ import annotations

import io
import json
import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch

from segnode.files import atomic_write
from segnode.pipeline.model.checksum import sha256_hex
from segnode.pipeline.model.manifest import DEFAULT_PREPROCESSING, MANIFEST_FILE, ModelManifest
from segnode.pipeline.model.registry import load_model
from segnode.pipeline.training.brats_data import BratsCase
from segnode.pipeline.training.config import TrainConfig, TrainingError
from segnode.pipeline.training.export import VAE_PREFIX
from segnode.vocabulary import CHANNEL_ORDER, NESTED_REGION_KEYS

log = logging.getLogger(__name__)

CHECKPOINT_NAME = "checkpoint.pt"
LOG_NAME = "train_log.jsonl"
MODEL_DIR_NAME = "model"
INIT_REPORT_NAME = "init_weights.json"
CHECKPOINT_FORMAT = 1


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

    @classmethod
    def from_dict(cls, record: Mapping[str, Any]) -> InitWeightsReport:
        """The report back from :meth:`as_dict` (the checkpoint and ``init_weights.json``)."""
        return cls(
            model_id=str(record["model_id"]),
            weights_sha256=str(record["weights_sha256"]),
            folder=str(record["folder"]),
            loaded=int(record["loaded"]),
            missing=tuple(str(name) for name in record["missing"]),
            unexpected=tuple(str(name) for name in record["unexpected"]),
        )


def load_initial_weights(
    network: torch.nn.Module, folder: Path, channel_order: Sequence[str] = CHANNEL_ORDER
) -> InitWeightsReport:
    """Copy a model folder's weights into ``network`` (float32) for fine-tuning.

    The folder loads as the node loads it (``registry.load_model``: manifest, checksum, a
    strict fit to its own architecture); then, non-strict for the VAE branch only: every
    parameter of the segmentation path (all keys not starting with ``vae_``) must be present
    with the network's shape, else nothing is loaded. VAE tensors of another shape (trained on
    another crop) are skipped and reported.

    Raises:
        TrainingError: the folder's input channels or outputs differ from the run's, or a
            segmentation-path parameter is missing or of another shape.
        ModelError: no valid manifest, or the weights fail their checksum or their own
            architecture (``segnode.pipeline.model.errors``).
    """
    source = load_model(folder)
    manifest = source.manifest
    where = f"--init-weights {folder} (model {manifest.id})"
    if tuple(manifest.input_channels) != tuple(channel_order):
        raise TrainingError(
            f"{where} takes channels {list(manifest.input_channels)}, this run feeds "
            f"{list(channel_order)}"
        )
    if tuple(manifest.output_channels) != NESTED_REGION_KEYS:
        raise TrainingError(
            f"{where} outputs {list(manifest.output_channels)}; training needs "
            f"{list(NESTED_REGION_KEYS)}"
        )
    state = source.network.state_dict()  # float32, exactly the checksum-verified file's keys
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
            f"filters) must match the run's (--init-filters)"
        )
    usable = {
        name: tensor for name, tensor in state.items() if name in expected and name not in wrong_shape
    }
    result = network.load_state_dict(usable, strict=False)
    unexpected = sorted([*result.unexpected_keys, *(n for n in state if n not in expected)])
    report = InitWeightsReport(
        model_id=manifest.id,
        weights_sha256=source.sha256,
        folder=str(folder),
        loaded=len(usable),
        missing=tuple(result.missing_keys),
        unexpected=tuple(sorted({*unexpected, *wrong_shape})),
    )
    log.info("initial weights loaded", extra={"init_weights": report.as_dict()})
    return report


def write_init_report(out_dir: Path, init: dict[str, Any]) -> None:
    """``init_weights.json``: what the run started from, beside its checkpoint."""
    text = json.dumps(init, indent=2) + "\n"
    atomic_write(out_dir / INIT_REPORT_NAME, lambda partial: partial.write_text(text))


class RunParts(Protocol):
    """What a checkpoint saves and restores of a run (``trainer._Run``)."""

    @property
    def network(self) -> torch.nn.Module: ...
    @property
    def optimizer(self) -> torch.optim.Optimizer: ...
    @property
    def scaler(self) -> torch.amp.GradScaler: ...
    @property
    def rng(self) -> np.random.Generator: ...
    @property
    def device(self) -> torch.device: ...


def save_checkpoint(path: Path, state: Mapping[str, Any]) -> None:
    """``torch.save`` atomically: a crash mid-write leaves the previous checkpoint intact."""
    atomic_write(path, lambda partial: torch.save(state, partial))


def save_run(
    path: Path,
    run: RunParts,
    *,
    epochs_done: int,
    architecture: str,
    history: list[dict[str, Any]],
    init: dict[str, Any] | None,
) -> None:
    """Everything needed to continue exactly here (weights, optimiser, scaler, every RNG)."""
    save_checkpoint(
        path,
        {
            "format": CHECKPOINT_FORMAT,
            "epoch": epochs_done,
            "model": run.network.state_dict(),
            "optimizer": run.optimizer.state_dict(),
            "scaler": run.scaler.state_dict(),
            "numpy_rng": run.rng.bit_generator.state,
            "torch_rng": torch.get_rng_state(),
            "cuda_rng": torch.cuda.get_rng_state_all() if run.device.type == "cuda" else [],
            "architecture": architecture,
            "history": history,
            "init_weights": init,
        },
    )


def restore_run(
    path: Path, run: RunParts, *, architecture: str
) -> tuple[list[dict[str, Any]], int, dict[str, Any] | None]:
    """Load a checkpoint into ``run``; returns its history, epochs done and init record.

    Raises:
        TrainingError: the checkpoint belongs to another architecture.
    """
    state = torch.load(path, map_location=run.device, weights_only=True)
    if state["architecture"] != architecture:
        raise TrainingError(
            f"{path} was trained with another architecture: {state['architecture']}; resume "
            "with the same --init-filters/--crop/--vae"
        )
    run.network.load_state_dict(state["model"])
    run.optimizer.load_state_dict(state["optimizer"])
    run.scaler.load_state_dict(state["scaler"])
    run.rng.bit_generator.state = state["numpy_rng"]
    torch.set_rng_state(state["torch_rng"].cpu())
    if run.device.type == "cuda" and state["cuda_rng"]:
        torch.cuda.set_rng_state_all([s.cpu() for s in state["cuda_rng"]])
    return list(state["history"]), int(state["epoch"]), state.get("init_weights")


def write_log(path: Path, history: list[dict[str, Any]]) -> None:
    """The whole log, one JSON line per epoch (on resume: nothing after the checkpoint)."""
    text = "".join(json.dumps(record) + "\n" for record in history)
    atomic_write(path, lambda partial: partial.write_text(text))


def append_log(path: Path, record: dict[str, Any]) -> None:
    """One epoch's line, after its checkpoint was saved (the log never leads)."""
    with path.open("a") as handle:
        handle.write(json.dumps(record) + "\n")


def write_model_folder(
    config: TrainConfig,
    network: torch.nn.Module,
    cases: Sequence[BratsCase],
    history: list[dict[str, Any]],
    val_ids: list[str],
    init: dict[str, Any] | None = None,
) -> tuple[Path, Path, Path, dict[str, Any]]:
    """Write ``<out_dir>/model/``: the weights (float16 with ``fp16_weights``) and a manifest
    carrying their sha256, the run's metrics and what it was trained on.

    Returns:
        The folder, the weights file, the manifest file and the metrics.
    """
    model_dir = config.out_dir / MODEL_DIR_NAME
    model_dir.mkdir(parents=True, exist_ok=True)
    dtype = torch.float16 if config.fp16_weights else torch.float32
    state = {
        key: (value.to(dtype) if value.is_floating_point() else value).detach().cpu().contiguous()
        for key, value in network.state_dict().items()
    }
    buffer = io.BytesIO()
    torch.save(state, buffer)
    data = buffer.getvalue()
    weights_path = atomic_write(model_dir / "model.pt", lambda partial: partial.write_bytes(data))
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
            **{region: last.get(f"val_dice_{region}") for region in NESTED_REGION_KEYS},
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
        input_channels=tuple(str(role) for role in config.channel_order),
        weights_sha256=sha256_hex(data),
        weights_dtype="float16" if config.fp16_weights else "float32",
        training_data=f"{description}. {config.training_data_note}".strip(),
        metrics=metrics,
    )
    manifest.write(model_dir)
    return model_dir, weights_path, model_dir / MANIFEST_FILE, metrics
