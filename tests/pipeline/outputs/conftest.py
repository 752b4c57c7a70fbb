"""Result objects written once per session from the TCGA study's T1c series.

Writing is the slow part (about a second per call on 2 cores), so each variant
is written once and the tests read the files back.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

from segnode.config.settings import ResultSeriesSettings
from segnode.pipeline.conversion import convert_series
from segnode.pipeline.outputs import write_results
from segnode.vocabulary import OutputKind
from tests.fixtures.dicom_study import BuiltSeries
from tests.pipeline.outputs.dicom_checks import (
    FLAGGED,
    PROVENANCE,
    T1cCase,
    Written,
    synthetic_labels,
    write_with_quality,
)

SETTINGS = ResultSeriesSettings(
    seg_series_number=701,
    sr_series_number=702,
    sc_series_number=703,
    pdf_series_number=704,
    series_description="segnode test run",
    manufacturer="Segnode Test Lab",
)


@pytest.fixture(scope="session")
def t1c(tcga_study: dict[str, BuiltSeries]) -> T1cCase:
    series = tcga_study["t1c"]
    return T1cCase(series, convert_series(series.files))


@pytest.fixture(scope="session")
def labels(t1c: T1cCase) -> sitk.Image:
    return synthetic_labels(t1c.volume)


def _write(
    t1c: T1cCase,
    labels: sitk.Image,
    settings: ResultSeriesSettings,
    kinds: list[OutputKind],
    out_dir: Path,
) -> Written:
    record = write_results(
        t1c.files, t1c.volume.slices, labels, 4, PROVENANCE, settings, kinds, out_dir
    )
    return Written(labels, record, settings)


@pytest.fixture(scope="session")
def written(t1c: T1cCase, labels: sitk.Image, tmp_path_factory: pytest.TempPathFactory) -> Written:
    """All four kinds."""
    return _write(t1c, labels, SETTINGS, ["seg", "sr", "sc", "pdf"], tmp_path_factory.mktemp("all"))


@pytest.fixture(scope="session")
def written_sr_only(
    t1c: T1cCase, labels: sitk.Image, tmp_path_factory: pytest.TempPathFactory
) -> Written:
    """Only "sr" asked for: the SEG it cites is written too."""
    return _write(t1c, labels, SETTINGS, ["sr"], tmp_path_factory.mktemp("sr_only"))


@pytest.fixture(scope="session")
def written_empty(t1c: T1cCase, tmp_path_factory: pytest.TempPathFactory) -> Written:
    """A label map without any tumour voxel, all four kinds."""
    empty = sitk.GetImageFromArray(
        np.zeros(sitk.GetArrayFromImage(t1c.volume.image).shape, dtype=np.uint8)
    )
    empty.CopyInformation(t1c.volume.image)
    return _write(
        t1c, empty, SETTINGS, ["seg", "sr", "sc", "pdf"], tmp_path_factory.mktemp("empty")
    )


@pytest.fixture(scope="session")
def written_flagged(t1c: T1cCase, labels: sitk.Image, tmp_path_factory: pytest.TempPathFactory) -> Written:
    """SC and PDF of the same labels with two quality flags raised (``FLAGGED``)."""
    return write_with_quality(t1c, labels, tmp_path_factory.mktemp("flagged"), ["sc", "pdf"], FLAGGED)
