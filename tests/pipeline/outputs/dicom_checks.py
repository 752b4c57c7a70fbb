"""Checks every result-object test uses: dciodvfy, and a synthetic label map on the T1c grid."""

from __future__ import annotations

import subprocess
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import SimpleITK as sitk
from numpy.typing import NDArray

from segnode.config.settings import ResultSeriesSettings
from segnode.pipeline.conversion import ConvertedVolume
from segnode.pipeline.outputs import AlgorithmProvenance, ResultsRecord, write_results
from segnode.pipeline.quality.record import QaCheck, QaFlag, QualityReport
from segnode.vocabulary import OutputKind, Role
from tests.fixtures.dicom_study import BuiltSeries
from tests.helpers import require_tool

PROVENANCE = AlgorithmProvenance(
    algorithm_name="segnode",
    algorithm_version="0.1.0",
    model_id="segnode-reference-v1",
    model_version="1",
    model_sha256="3f" * 32,
)


@dataclass(frozen=True)
class T1cCase:
    """The post-contrast T1 series of the TCGA study and its volume."""

    series: BuiltSeries
    volume: ConvertedVolume

    @property
    def files(self) -> list[Path]:
        return self.series.files


@dataclass(frozen=True)
class Written:
    """One write_results call: what went in and what came out."""

    labels: sitk.Image
    record: ResultsRecord
    settings: ResultSeriesSettings


#: Two flags as the quality checks word them (one with a degree sign), long enough to wrap.
FLAGGED = QualityReport(
    flags=(
        QaFlag(
            check=QaCheck.MOTION,
            summary="FLAIR is 16.2 mm / 3.1° from the T1c (limit 2.0 mm / 2.0°)",
            role=Role.FLAIR,
        ),
        QaFlag(
            check=QaCheck.SLICE_THICKNESS,
            summary="T2 slices are 6.5 mm apart; the training data's are at most 5.0 mm",
            role=Role.T2,
        ),
    ),
    checked=tuple(QaCheck),
)


def write_with_quality(
    t1c: T1cCase, labels: sitk.Image, out: Path, kinds: list[OutputKind], quality: QualityReport
) -> Written:
    """``kinds`` of ``labels`` on the T1c, written with ``quality``'s flags (default settings)."""
    settings = ResultSeriesSettings()
    record = write_results(
        t1c.files, t1c.volume.slices, labels, 4, PROVENANCE, settings, kinds, out, quality
    )
    return Written(labels, record, settings)


@dataclass(frozen=True)
class Validation:
    """dciodvfy's verdict on one file."""

    errors: list[str]
    warnings: list[str]


def dciodvfy(path: Path) -> Validation:
    """Run dicom3tools' IOD validator; its findings are the lines starting Error/Warning."""
    result = subprocess.run(
        [require_tool("dciodvfy"), str(path)], capture_output=True, text=True, timeout=60
    )
    lines = (result.stdout + result.stderr).splitlines()
    return Validation(
        errors=[line for line in lines if line.startswith("Error")],
        warnings=[line for line in lines if line.startswith("Warning")],
    )


#: Warnings accepted on our objects, with the reason (anything else fails a test):
#: the SR declares and uses the private coding scheme 99SEGNODE for WT and TC,
#: which dciodvfy's dictionary of designators cannot know.
ACCEPTED_WARNINGS = ("Unrecognized defined term <99SEGNODE>",)


def unexpected_warnings(validation: Validation) -> list[str]:
    return [w for w in validation.warnings if not any(a in w for a in ACCEPTED_WARNINGS)]


def synthetic_labels(volume: ConvertedVolume, et_label: int = 4) -> sitk.Image:
    """A BraTS-style label map on the T1c grid: two lesions, nested NCR/ET/ED.

    Synthetic, and why: the only real label we have (the SRI24-space silver
    label) lies in another space, and mapping it back would test the
    registration, not the writers. Lesion A has a necrotic core off-centre in an
    enhancing rim (so ET and ED have holes on some slices) inside oedema; lesion B
    is small oedema with an enhancing focus. Both lie inside the brain of
    TCGA-FG-6692's post-contrast T1.
    """
    spacing_x, spacing_y, spacing_z = volume.image.GetSpacing()
    shape = sitk.GetArrayFromImage(volume.image).shape
    z, rows, columns = np.ogrid[: shape[0], : shape[1], : shape[2]]

    def distance_mm(
        centre: tuple[float, float, float], scale: tuple[float, float, float] = (1, 1, 1)
    ) -> NDArray[np.float64]:
        cz, cr, cc = centre
        return np.sqrt(
            ((z - cz) * spacing_z / scale[0]) ** 2
            + ((rows - cr) * spacing_y / scale[1]) ** 2
            + ((columns - cc) * spacing_x / scale[2]) ** 2
        )

    labels = np.zeros(shape, dtype=np.uint8)
    lesion_a = distance_mm((13, 100, 90), (1.0, 1.2, 1.0))
    labels[lesion_a < 30] = 2
    labels[lesion_a < 17] = et_label
    labels[distance_mm((13.4, 104, 93)) < 9] = 1
    lesion_b = distance_mm((8, 150, 170))
    labels[lesion_b < 9] = 2
    labels[lesion_b < 4] = et_label
    image = sitk.GetImageFromArray(labels)
    image.CopyInformation(volume.image)
    return image
