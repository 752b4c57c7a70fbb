"""One training run's configuration, validated on construction.

Why a dataclass of its own and not a section of node.toml: training runs on a workstation
from the command line, not in the node; ``segnode train`` maps its options onto these
fields one to one (each flag is the field's name, ``--init-filters`` for ``init_filters``),
and recipes (``recipes.py``) and cross-validation fill it in code.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from segnode.pipeline.model.errors import ModelError
from segnode.pipeline.model.manifest import ArchitectureSpec
from segnode.pipeline.training.augmentation import PAPER_CROP, Shape3
from segnode.pipeline.training.brats_data import BratsCase, find_case, find_cases
from segnode.vocabulary import CHANNEL_ORDER, Role


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
    """'auto' (or None), 'cpu', 'cuda', 'cuda:1': ``segnode.pipeline.model.device``'s rules."""
    max_steps_per_epoch: int | None = None
    fp16_weights: bool = False
    amp: bool = True
    """Mixed precision on CUDA, of the device policy's type (ignored on CPU)."""
    learning_rate: float = 1e-4
    weight_decay: float = 1e-5
    channel_order: tuple[str, ...] = CHANNEL_ORDER
    """Roles in the network's input order (``vocabulary.CHANNEL_ORDER``)."""
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
        if sorted(self.channel_order) != sorted(Role):
            raise TrainingError(
                f"channel_order must be a permutation of {tuple(role.value for role in Role)}"
            )

    @property
    def uses_vae(self) -> bool:
        return self.architecture().name == "SegResNetVAE"

    @property
    def spacing_factor(self) -> int:
        return int(round(self.spacing_mm))

    def training_cases(self) -> list[BratsCase]:
        """The labelled cases of ``cases`` and ``data_roots``, each once.

        Raises:
            TrainingError: no case, or a case without a label map.
            TrainingDataError: a case folder is incomplete.
        """
        found = [find_case(folder) for folder in self.cases]
        for root in self.data_roots:
            found.extend(find_cases(root, require_label=True))
        # A case named twice (a folder and its root) would be trained twice per epoch.
        by_folder = {case.folder.resolve(): case for case in reversed(found)}
        cases = [case for case in found if by_folder[case.folder.resolve()] is case]
        unlabelled = [case.case_id for case in cases if case.label is None]
        if unlabelled:
            raise TrainingError(f"training cases without a label map: {unlabelled}")
        if not cases:
            raise TrainingError(f"no labelled cases found under {list(self.data_roots)}")
        return cases

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
