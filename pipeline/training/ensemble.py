"""Ship the cross-validation fold models as one model folder (one weights file, one checksum).

Why the fold models and not one model retrained on all cases: on 2 CPU cores a fold model is
the longest run a session affords, the ensemble of five is at least as good as one of them
(its members' errors differ), and its cross-validated figures are measured rather than
assumed. Each member saw 17-18 of the 22 cases; every case trained four of the five members.

The folder is an ordinary model folder (``manifest.json`` + ``model.pt``): the architecture
says ``ensemble_members`` and ``network.MeanOfMembers`` averages the members' probabilities;
VAE branches (training-only) are dropped; weights are float16.
"""

from __future__ import annotations

import io
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from segnode.files import atomic_write
from segnode.pipeline.model.checksum import sha256_hex
from segnode.pipeline.model.errors import InvalidManifestError
from segnode.pipeline.model.manifest import ModelManifest, PostprocessingSpec
from segnode.pipeline.model.network import build_network
from segnode.pipeline.model.weights import read_verified_weights
from segnode.pipeline.training.export import VAE_PREFIX


def pack_ensemble(
    member_dirs: Sequence[Path],
    out_dir: Path,
    *,
    model_id: str,
    name: str,
    version: str,
    postprocessing: PostprocessingSpec | None,
    training_data: str,
    metrics: dict[str, Any],
) -> ModelManifest:
    """Write ``out_dir`` holding the members as one float16 network and return its manifest.

    Raises:
        InvalidManifestError: no member, or members of different architectures, channels or
            grids.
        ModelError: a member's weights fail their checksum (``weights.read_verified_weights``).
    """
    if not member_dirs:
        raise InvalidManifestError("an ensemble needs at least one member model")
    manifests = [ModelManifest.read(folder) for folder in member_dirs]
    first = manifests[0]
    architecture = first.architecture
    if architecture.name == "SegResNetVAE":
        architecture = architecture.model_copy(
            update={"name": "SegResNet", "vae_input_shape": None}
        )
    for manifest in manifests[1:]:
        if (
            manifest.architecture != first.architecture
            or manifest.input_channels != first.input_channels
            or manifest.output_channels != first.output_channels
            or manifest.preprocessing != first.preprocessing
        ):
            raise InvalidManifestError(
                f"ensemble members differ: {first.id} and {manifest.id} have other "
                "architectures, channels or preprocessing"
            )
    state: dict[str, torch.Tensor] = {}
    for index, (folder, manifest) in enumerate(zip(member_dirs, manifests, strict=True)):
        weights = read_verified_weights(folder, manifest)
        for key, value in weights.state.items():
            if key.startswith(VAE_PREFIX):
                continue
            state[f"members.{index}.{key}"] = value.half() if value.is_floating_point() else value
    spec = architecture.model_copy(update={"ensemble_members": len(member_dirs)})
    # Refuse to write a file that would not load: strict load into the shipped architecture.
    build_network(spec).load_state_dict({k: v.float() for k, v in state.items()}, strict=True)
    out_dir.mkdir(parents=True, exist_ok=True)
    buffer = io.BytesIO()
    torch.save(state, buffer)
    data = buffer.getvalue()
    atomic_write(out_dir / "model.pt", lambda partial: partial.write_bytes(data))
    manifest = ModelManifest(
        id=model_id,
        name=name,
        version=version,
        architecture=spec,
        input_channels=first.input_channels,
        output_channels=first.output_channels,
        preprocessing=first.preprocessing,
        postprocessing=postprocessing,
        weights_file="model.pt",
        weights_sha256=sha256_hex(data),
        weights_dtype="float16",
        training_data=training_data,
        metrics={**metrics, "members": [m.id for m in manifests]},
    )
    manifest.write(out_dir)
    return manifest


def pack_cv_run(
    cv_dir: Path, out_dir: Path, *, model_id: str, version: str, training_note: str = ""
) -> ModelManifest:
    """The fold models of a ``segnode cv`` run as one model, with the run's tuned
    post-processing and cross-validated figures in the manifest.

    Raises:
        InvalidManifestError: the run has no report or a fold model is missing.
    """
    report_path = cv_dir / "cv_report.json"
    if not report_path.is_file():
        raise InvalidManifestError(f"{cv_dir} has no cv_report.json: run segnode cv to the end")
    report = json.loads(report_path.read_text())
    folds = sorted(report["folds"], key=int)
    members = [cv_dir / f"fold{fold}" / "model" for fold in folds]
    missing = [str(folder) for folder in members if not (folder / "manifest.json").is_file()]
    if missing:
        raise InvalidManifestError(f"fold models missing: {missing}")
    cases = sorted(case for fold in folds for case in report["folds"][fold])
    tuned = PostprocessingSpec(
        **report["postprocessing"],
        tuned_on=f"{len(folds)}-fold cross-validation, validation folds ({len(cases)} cases)",
    )
    training = (
        f"Ensemble of {len(members)} fold models of recipe {report['recipe']} "
        f"({report['steps']} steps each); each member trained on all cases but its fold. "
        f"Cases: {', '.join(cases)}. {training_note}".strip()
    )
    return pack_ensemble(
        members,
        out_dir,
        model_id=model_id,
        name=f"segnode BraTS ensemble ({report['recipe']}, {len(members)} folds)",
        version=version,
        postprocessing=tuned,
        training_data=training,
        metrics={
            "cross_validation": {
                "recipe": report["recipe"],
                "steps_per_fold": report["steps"],
                "summary": report["summary"],
                "confusion": report["confusion"],
                "folds": report["folds"],
                "note": "each fold scored by the member that did not see it",
            }
        },
    )
