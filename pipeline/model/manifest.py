"""A model's manifest: what the weights are, what they expect, what they output, how good they are.

A model is a folder with ``manifest.json`` and a weights file. The node refuses to load
weights whose sha256 differs from the manifest, and records the model id and checksum in
every job. Input channel order and output semantics are data here, so a site's MONAI
bundle with another channel order or output order runs without code changes.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

ROLES = ("t1", "t1c", "t2", "flair")
MANIFEST_FILE = "manifest.json"
"""The manifest's file name inside a model folder."""


class ArchitectureSpec(BaseModel):
    """Hyperparameters of MONAI's SegResNet / SegResNetVAE (paper section 3: 32 filters,
    blocks 1-2-2-4 down and 1-1-1 up, GroupNorm 8, dropout 0.2)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: Literal["SegResNetVAE", "SegResNet"] = "SegResNetVAE"
    init_filters: Annotated[int, Field(ge=1)] = 32
    blocks_down: tuple[int, ...] = (1, 2, 2, 4)
    blocks_up: tuple[int, ...] = (1, 1, 1)
    dropout_prob: Annotated[float, Field(ge=0, le=1)] = 0.2
    in_channels: int = 4
    out_channels: int = 3
    norm_groups: int = 8
    vae_input_shape: tuple[int, int, int] | None = (160, 192, 128)
    """SegResNetVAE's VAE branch is sized for the training crop."""


class ManifestMetrics(BaseModel):
    model_config = ConfigDict(extra="allow", frozen=True)


class ModelManifest(BaseModel):
    """Everything a site and the node need to know about one set of weights."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    id: Annotated[str, Field(pattern=r"^[a-z0-9][a-z0-9._-]{0,63}$")]
    name: str
    version: str
    architecture: ArchitectureSpec = ArchitectureSpec()
    input_channels: tuple[str, ...] = ROLES
    """Which sequence feeds which channel, in order (roles: t1, t1c, t2, flair)."""
    output_channels: tuple[str, ...] = ("wt", "tc", "et")
    """Meaning of each output channel, in order (nested regions)."""
    output_activation: Literal["sigmoid"] = "sigmoid"
    preprocessing: dict[str, object] = {
        "spacing_mm": 1.0,
        "orientation": "LPS",
        "normalisation": "z-score over non-zero (brain) voxels, per channel",
        "skull_stripped": True,
    }
    weights_file: str = "model.pt"
    weights_sha256: Annotated[str, Field(pattern=r"^[0-9a-f]{64}$")]
    weights_dtype: Literal["float32", "float16"] = "float32"
    training_data: str = ""
    metrics: dict[str, object] = {}
    intended_use: str = "Research use only. Not for clinical use."
    source: str = "segnode"

    @field_validator("input_channels")
    @classmethod
    def _known_roles(cls, channels: tuple[str, ...]) -> tuple[str, ...]:
        unknown = set(channels) - set(ROLES)
        if unknown or len(set(channels)) != len(channels):
            raise ValueError(f"input_channels must be distinct roles of {ROLES}, got {channels}")
        return channels

    @field_validator("output_channels")
    @classmethod
    def _known_regions(cls, channels: tuple[str, ...]) -> tuple[str, ...]:
        if sorted(channels) != ["et", "tc", "wt"]:
            raise ValueError(f"output_channels must be a permutation of wt, tc, et, got {channels}")
        return channels

    @classmethod
    def read(cls, folder: Path) -> ModelManifest:
        return cls.model_validate(json.loads((folder / MANIFEST_FILE).read_text()))

    def write(self, folder: Path) -> None:
        (folder / MANIFEST_FILE).write_text(self.model_dump_json(indent=2) + "\n")
