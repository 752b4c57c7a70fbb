"""How far the test-time-augmentation passes agree: the node's own uncertainty measure.

Why: the mean over the 8 flips (and an ensemble's members) hides how much they differ. On an
input like the training data they agree almost everywhere; on an unusual one (artefacts, a
sequence substituted, a lesion unlike the training set's) the passes draw different tumours,
and a reader should know before trusting the volumes. Three figures per network region (WT,
TC, ET), from running sums, so memory stays one extra volume whatever the number of passes:

- the volume each single pass gives (probability above the post-processing's threshold, so
  a pass's volume is comparable with the result's), as (smallest, largest);
- the disagreement: among voxels that any pass puts in the region, the share that not every
  pass does (0 when all passes draw the same region, 1 when no voxel is shared by all);
- the mean voxel-wise standard deviation of the passes' probabilities over those voxels.

Passes are counted on the network's own grid; ``voxel_scale`` converts counts to the image
grid (a 2 mm model on the 1 mm grid: 8 image voxels per model voxel).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import torch

from segnode.pipeline.errors import InferenceError
from segnode.vocabulary import NESTED_REGIONS, Region

THRESHOLD = 0.5


@dataclass(frozen=True, slots=True)
class AgreementSummary:
    """The passes' agreement per region; voxel counts are on the image grid."""

    passes: int
    pass_voxels: dict[Region, tuple[int, ...]]
    """Voxels each pass puts in the region, one count per pass."""
    disagreement: dict[Region, float]
    mean_std: dict[Region, float]

    def volumes_ml(self, voxel_volume_ml: float) -> dict[Region, tuple[float, float]]:
        """(smallest, largest) single-pass volume per region, in ml."""
        return {
            region: (min(counts) * voxel_volume_ml, max(counts) * voxel_volume_ml)
            for region, counts in self.pass_voxels.items()
        }


@dataclass(slots=True)
class PassAgreement:
    """Collects the passes of one prediction; give it each pass's probabilities, flipped back."""

    thresholds: tuple[float, ...] = ()
    """Per output channel, where a pass's region starts; empty: 0.5 for every channel."""
    passes: int = 0
    _votes: torch.Tensor | None = None
    _sum: torch.Tensor | None = None
    _sum_squares: torch.Tensor | None = None
    _counts: list[list[int]] = field(default_factory=list)

    def add(self, probabilities: torch.Tensor) -> None:
        """One pass: (1, regions, x, y, z) probabilities on the network's grid."""
        if self._votes is None:
            self._votes = torch.zeros(
                probabilities.shape, dtype=torch.int16, device=probabilities.device
            )
            self._sum = torch.zeros(
                probabilities.shape, dtype=torch.float32, device=probabilities.device
            )
            self._sum_squares = torch.zeros_like(self._sum)
        elif probabilities.shape != self._votes.shape:
            raise InferenceError(
                f"pass of shape {tuple(probabilities.shape)} after {tuple(self._votes.shape)}"
            )
        assert self._sum is not None and self._sum_squares is not None
        if self.thresholds:
            if len(self.thresholds) != probabilities.shape[1]:
                raise InferenceError(
                    f"{len(self.thresholds)} thresholds for {probabilities.shape[1]} channels"
                )
            limits = torch.tensor(self.thresholds, device=probabilities.device).view(1, -1, 1, 1, 1)
            inside = probabilities > limits
        else:
            inside = probabilities > THRESHOLD
        self._votes += inside
        values = probabilities.float()
        self._sum += values
        self._sum_squares += values * values
        self._counts.append([int(n) for n in inside.sum(dim=(0, 2, 3, 4)).tolist()])
        self.passes += 1

    def summary(self, order: Sequence[int], voxel_scale: int = 1) -> AgreementSummary:
        """The figures per region; ``order[i]`` is the output channel of ``NESTED_REGIONS[i]``.

        Raises:
            InferenceError: if no pass was added.
        """
        if self._votes is None or self._sum is None or self._sum_squares is None:
            raise InferenceError("no pass to summarise")
        passes = self.passes
        disagreement: dict[Region, float] = {}
        mean_std: dict[Region, float] = {}
        pass_voxels: dict[Region, tuple[int, ...]] = {}
        for region, channel in zip(NESTED_REGIONS, order, strict=True):
            votes = self._votes[0, channel]
            union = votes > 0
            union_count = int(union.sum())
            if union_count == 0:
                disagreement[region], mean_std[region] = 0.0, 0.0
            else:
                disagreement[region] = int((union & (votes < passes)).sum()) / union_count
                mean = self._sum[0, channel][union] / passes
                variance = (self._sum_squares[0, channel][union] / passes - mean * mean).clamp(
                    min=0
                )
                mean_std[region] = float(variance.sqrt().mean())
            pass_voxels[region] = tuple(counts[channel] * voxel_scale for counts in self._counts)
        return AgreementSummary(passes, pass_voxels, disagreement, mean_std)
