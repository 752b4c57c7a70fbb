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

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from segnode.files import atomic_write
from segnode.pipeline.model.errors import InvalidManifestError
from segnode.vocabulary import CHANNEL_ORDER, NESTED_REGION_KEYS, Role

MANIFEST_FILE = "manifest.json"
"""The manifest's file name inside a model folder."""
_ROLE_NAMES = tuple(role.value for role in CHANNEL_ORDER)


class ArchitectureSpec(BaseModel):
    """Hyperparameters of MONAI's SegResNet / SegResNetVAE (paper section 3: 32 filters,
    blocks 1-2-2-4 down and 1-1-1 up, GroupNorm 8, dropout 0.2), or of MONAI's residual
    3D U-Net (the comparison recipe of ``segnode.pipeline.training.recipes``: ``unet_channels`` per level,
    stride 2 between levels, ``unet_res_units`` residual units per block)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: Literal["SegResNetVAE", "SegResNet", "UNet"] = "SegResNetVAE"
    init_filters: Annotated[int, Field(ge=1)] = 32
    blocks_down: tuple[int, ...] = (1, 2, 2, 4)
    blocks_up: tuple[int, ...] = (1, 1, 1)
    dropout_prob: Annotated[float, Field(ge=0, le=1)] = 0.2
    in_channels: int = 4
    out_channels: int = 3
    norm_groups: int = 8
    vae_input_shape: tuple[int, int, int] | None = (160, 192, 128)
    """SegResNetVAE's VAE branch is sized for the training crop."""
    unet_channels: tuple[int, ...] = (16, 32, 64, 128)
    unet_res_units: Annotated[int, Field(ge=0)] = 2
    ensemble_members: Annotated[int, Field(ge=1)] = 1
    """Networks of this architecture in the weights file (``network.MeanOfMembers``): the
    cross-validation fold models shipped as one model."""


DEFAULT_PREPROCESSING: dict[str, object] = {
    "spacing_mm": 1.0,
    "orientation": "LPS",
    "normalisation": "z-score over non-zero (brain) voxels, per channel",
    "skull_stripped": True,
}


class PostprocessingSpec(BaseModel):
    """Parameters of ``postprocess.postprocess`` chosen on the validation folds, not on test data."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    threshold: Annotated[float, Field(gt=0, lt=1)] = 0.5
    et_threshold: Annotated[float, Field(gt=0, lt=1)] | None = None
    """Threshold of the enhancing-tumour output; None: ``threshold``."""
    et_min_voxels: Annotated[int, Field(ge=0)] = 500
    min_component_voxels: Annotated[int, Field(ge=0)] = 50
    tuned_on: str = ""
    """Where the values were chosen (e.g. "5-fold CV validation folds, 22 cases")."""


class ModelManifest(BaseModel):
    """Everything a site and the node need to know about one set of weights."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    id: Annotated[str, Field(pattern=r"^[a-z0-9][a-z0-9._-]{0,63}$")]
    name: str
    version: str
    architecture: ArchitectureSpec = ArchitectureSpec()
    input_channels: tuple[str, ...] = _ROLE_NAMES
    """Which sequence feeds which channel, in order (``vocabulary.Role`` values)."""
    output_channels: tuple[str, ...] = NESTED_REGION_KEYS
    """Meaning of each output channel, in order (``vocabulary.Region.key`` of the nested
    regions: wt, tc, et)."""
    output_activation: Literal["sigmoid"] = "sigmoid"
    preprocessing: dict[str, object] = DEFAULT_PREPROCESSING
    """``spacing_mm`` is the grid the network runs on: inference block-averages the 1 mm brain
    box to it and interpolates the probabilities back (``segnode.pipeline.model.resolution``)."""
    postprocessing: PostprocessingSpec | None = None
    """Post-processing tuned on the model's cross-validation folds; None: the node's
    configured defaults (``[model]`` in node.toml)."""
    weights_file: str = "model.pt"
    """A plain file name inside the model folder (no path: a model is one folder)."""
    weights_sha256: Annotated[str, Field(pattern=r"^[0-9a-f]{64}$")]
    weights_dtype: Literal["float32", "float16"] = "float32"
    training_data: str = ""
    metrics: dict[str, object] = {}
    intended_use: str = "Research use only. Not for clinical use."
    source: str = "segnode"

    @field_validator("input_channels")
    @classmethod
    def _known_roles(cls, channels: tuple[str, ...]) -> tuple[str, ...]:
        unknown = set(channels) - set(Role)
        if unknown or len(set(channels)) != len(channels):
            raise ValueError(
                f"input_channels must be distinct roles of {_ROLE_NAMES}, got {channels}"
            )
        return channels

    @field_validator("output_channels")
    @classmethod
    def _known_regions(cls, channels: tuple[str, ...]) -> tuple[str, ...]:
        if sorted(channels) != sorted(NESTED_REGION_KEYS):
            raise ValueError(f"output_channels must be a permutation of wt, tc, et, got {channels}")
        return channels

    @field_validator("weights_file")
    @classmethod
    def _plain_file_name(cls, name: str) -> str:
        if Path(name).name != name or name.startswith(".") or not name:
            raise ValueError(
                f"weights_file {name!r} points outside the folder (or into a subfolder, or is "
                "hidden); it must be a plain file name inside the model folder"
            )
        return name

    @model_validator(mode="after")
    def _channels_fit_the_network(self) -> ModelManifest:
        architecture = self.architecture
        if architecture.in_channels != len(self.input_channels):
            raise ValueError(
                f"the architecture takes {architecture.in_channels} input channels but "
                f"input_channels lists {len(self.input_channels)}"
            )
        if architecture.out_channels != len(self.output_channels):
            raise ValueError(
                f"the architecture gives {architecture.out_channels} output channels but "
                f"output_channels lists {len(self.output_channels)}"
            )
        return self

    def spacing_factor(self) -> int:
        """How many 1 mm voxels one model voxel spans per axis (1, or 2 for a 2 mm model)."""
        spacing = float(str(self.preprocessing.get("spacing_mm", 1.0)))
        factor = round(spacing)
        if factor < 1 or abs(spacing - factor) > 1e-6:
            raise ValueError(f"model {self.id}: spacing_mm {spacing} is not a whole number of mm")
        return factor

    @classmethod
    def read(cls, folder: Path) -> ModelManifest:
        """The manifest of a model folder, validated: the one reader every loader uses.

        Raises:
            InvalidManifestError: no such folder, no ``manifest.json``, or one that is not
                valid JSON or fails validation (the message names the file and the field).
        """
        path = folder / MANIFEST_FILE
        if not folder.is_dir():
            raise InvalidManifestError(f"model folder {folder} does not exist or is not a folder")
        if not path.is_file():
            raise InvalidManifestError(
                f"model folder {folder} has no {MANIFEST_FILE}; not a segnode model folder"
            )
        try:
            return cls.model_validate(json.loads(path.read_text()))
        except (OSError, ValidationError, json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise InvalidManifestError(f"{path} is not a valid model manifest: {exc}") from exc

    def write(self, folder: Path) -> None:
        """Write ``manifest.json`` into ``folder`` (atomically: never half a manifest)."""
        text = self.model_dump_json(indent=2) + "\n"
        atomic_write(folder / MANIFEST_FILE, lambda tmp: tmp.write_text(text))
