"""Write the requested result objects for one label map: SEG, SR, SC, PDF.

Why this order of work: every object is built in memory first and written
only when all were built, each atomically (temporary file, fsync, rename), so
a failure leaves either all requested objects or none of them in ``out_dir``
(a rename that fails half-way removes what this call already wrote).

The SR refers to the SEG's segments; when it is requested without "seg", the
SEG is written as well, since an SR must not cite an object that does not exist.

Each output has one builder in :data:`BUILDERS`, so a new output kind is one entry
there (plus its series number and label in ``provenance``), not a new branch.

A series that registration found moved against the T1c (``RegisteredSeriesLabels``,
made by ``segnode.pipeline.series_labels``) gets one more SEG in its own geometry, in
the same all-or-nothing write: a viewer draws the T1c's SEG on it by patient
coordinates, which there lies beside the lesion. Only the SEG: the SR, SC and PDF
measure and show the T1c.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Collection, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import overload

import highdicom as hd
import numpy as np
import SimpleITK as sitk
from numpy.typing import NDArray
from pydicom.dataset import Dataset

from segnode.config.settings import (
    REGISTERED_SERIES_ORDER,
    ResultSeriesSettings,
)
from segnode.files import atomic_write, fsync_dir
from segnode.pipeline.conversion import SliceRef
from segnode.pipeline.outputs.errors import OutputError, OutputSpecError
from segnode.pipeline.outputs.pdf_report import build_pdf_report
from segnode.pipeline.outputs.preview import write_preview
from segnode.pipeline.outputs.provenance import (
    KIND_LABELS,
    LO_MAX_CHARS,
    NOT_FOR_CLINICAL_USE_SUFFIX,
    AlgorithmProvenance,
    SeriesSpec,
)
from segnode.pipeline.outputs.regions import (
    RegionStatistics,
    convention_of,
    label_array,
    region_masks,
    region_statistics,
    voxel_volume_mm3,
)
from segnode.pipeline.outputs.secondary_capture import build_secondary_captures
from segnode.pipeline.outputs.seg import build_segmentation
from segnode.pipeline.outputs.source import SourceSeries, check_label_geometry, load_source_series
from segnode.pipeline.outputs.sr import build_measurement_report
from segnode.pipeline.quality.assess import ROLE_NAMES
from segnode.pipeline.quality.record import QualityReport
from segnode.vocabulary import OUTPUT_KINDS, LabelConvention, OutputKind, Region, Role

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class WrittenObject:
    """One DICOM file this node wrote, and what it is."""

    kind: OutputKind
    path: Path
    sop_class_uid: str
    sop_instance_uid: str
    series_instance_uid: str
    source_role: Role = Role.T1C
    """The series whose geometry (instances, frame of reference) the object lies in."""

    def as_record(self) -> dict[str, str]:
        return {
            "kind": self.kind,
            "path": str(self.path),
            "sop_class_uid": self.sop_class_uid,
            "sop_instance_uid": self.sop_instance_uid,
            "series_instance_uid": self.series_instance_uid,
            "source_role": self.source_role.value,
        }


@dataclass(frozen=True, slots=True)
class ResultsRecord(Sequence[WrittenObject]):
    """What ``write_results`` produced: the written objects and the region volumes.

    It is a sequence of its ``objects`` (iterate, index, ``len``), so callers that
    want only the files can treat it as the list of written objects.
    """

    objects: tuple[WrittenObject, ...]
    statistics: RegionStatistics
    provenance: AlgorithmProvenance

    @overload
    def __getitem__(self, index: int) -> WrittenObject: ...
    @overload
    def __getitem__(self, index: slice) -> Sequence[WrittenObject]: ...
    def __getitem__(self, index: int | slice) -> WrittenObject | Sequence[WrittenObject]:
        return self.objects[index]

    def __len__(self) -> int:
        return len(self.objects)

    def __iter__(self) -> Iterator[WrittenObject]:
        return iter(self.objects)

    def of_kind(self, kind: OutputKind) -> list[WrittenObject]:
        return [obj for obj in self.objects if obj.kind == kind]

    def as_record(self) -> dict[str, object]:
        """For the job's record (no patient data: UIDs, paths, volumes, provenance)."""
        return {
            "objects": [obj.as_record() for obj in self.objects],
            "volumes": self.statistics.as_record(),
            "provenance": self.provenance.as_record(),
        }


#: Pregnancy Status (0010,21C0) enumerated values (PS3.3 C.7.2.2); scanners write 0.
PREGNANCY_STATUS_VALUES = {1, 2, 3, 4}


def _drop_invalid_copied_attributes(dataset: Dataset) -> None:
    """Remove copied Type 3 patient attributes whose source value is not valid DICOM.

    highdicom copies the Patient Study module from the source image as it is;
    a value the standard does not define (Philips writes Pregnancy Status 0)
    carries no information, and would make our own object fail validation.
    """
    status = dataset.get("PregnancyStatus")
    if status is not None and status not in PREGNANCY_STATUS_VALUES:
        del dataset.PregnancyStatus


def _write_atomic(dataset: Dataset, path: Path) -> None:
    """One object, flushed before its rename (the folder is flushed once, after all)."""
    atomic_write(path, lambda tmp: dataset.save_as(tmp, enforce_file_format=True), fsync=True)


@dataclass(frozen=True, slots=True)
class LabelledSeries:
    """What every builder draws on: the source series, its region masks and volumes, who made them."""

    source: SourceSeries
    masks: Mapping[Region, NDArray[np.bool_]]
    statistics: RegionStatistics
    provenance: AlgorithmProvenance
    convention: LabelConvention
    quality: QualityReport
    """The job's quality flags; every human-readable object shows them."""


@dataclass(frozen=True, slots=True)
class RegisteredSeriesLabels:
    """The label map on another series of the study, one registration moved against the T1c.

    ``labels`` lies in exactly ``convert_series(source_files).image``'s geometry (as the
    T1c's label map lies in the T1c's), ``slices`` being that conversion's slices.
    """

    role: Role
    source_files: Sequence[Path]
    slices: Sequence[SliceRef]
    labels: sitk.Image


def registered_series_spec(settings: ResultSeriesSettings, role: Role) -> SeriesSpec:
    """E.g. 9905 "segnode tumour SEG on FLAIR - not for clinical use": which series it overlays.

    A ``series_description`` too long for that in a LO (64 characters; it may have up to 36,
    for "<it> SEG - not for clinical use") is shortened here: which series the SEG lies on
    matters more to a reader than the end of the site's prefix, and a configuration that
    was valid stays valid.

    Raises:
        OutputSpecError: for the T1c (its SEG is the main one) or an unnumbered role.
    """
    if role not in REGISTERED_SERIES_ORDER:
        raise OutputSpecError(
            f"no SEG series for the {role.value} as a registered series; only "
            f"{[r.value for r in REGISTERED_SERIES_ORDER]} are registered to the T1c"
        )
    ending = f" {KIND_LABELS['seg']} on {ROLE_NAMES[role]}{NOT_FOR_CLINICAL_USE_SUFFIX}"
    prefix = settings.series_description[: LO_MAX_CHARS - len(ending)].rstrip()
    return SeriesSpec(
        series_number=settings.registered_series_first_number + REGISTERED_SERIES_ORDER.index(role),
        series_description=prefix + ending,
        manufacturer=settings.manufacturer,
    )


def _registered_seg(
    registered: RegisteredSeriesLabels,
    convention: LabelConvention,
    provenance: AlgorithmProvenance,
    settings: ResultSeriesSettings,
) -> Dataset:
    """The same segments, colours and provenance as the T1c's SEG, on the registered series."""
    source = load_source_series(registered.source_files, registered.slices)
    check_label_geometry(registered.labels, source)
    masks = region_masks(label_array(registered.labels, convention), convention)
    return build_segmentation(
        source,
        masks,
        registered_series_spec(settings, registered.role),
        provenance,
        series_instance_uid=hd.UID(),
        sop_instance_uid=hd.UID(),
    )


#: The objects built so far, per output (in :data:`OUTPUT_KINDS` order).
Built = Mapping[OutputKind, Sequence[Dataset]]
#: Builds one output's objects in a new series (the SeriesSpec and Series Instance UID given),
#: seeing what was built for the outputs before it.
Builder = Callable[[LabelledSeries, SeriesSpec, str, Built], list[Dataset]]


def _seg(case: LabelledSeries, series: SeriesSpec, series_uid: str, _: Built) -> list[Dataset]:
    return [
        build_segmentation(
            case.source,
            case.masks,
            series,
            case.provenance,
            series_instance_uid=series_uid,
            sop_instance_uid=hd.UID(),
        )
    ]


def _sr(case: LabelledSeries, series: SeriesSpec, series_uid: str, earlier: Built) -> list[Dataset]:
    # The SR cites the T1c's SEG; _checked_outputs made sure one is built first.
    return [
        build_measurement_report(
            case.source,
            case.masks,
            case.statistics,
            series,
            case.provenance,
            series_instance_uid=series_uid,
            sop_instance_uid=hd.UID(),
            segmentation=earlier["seg"][0],
            quality=case.quality,
        )
    ]


def _sc(case: LabelledSeries, series: SeriesSpec, series_uid: str, _: Built) -> list[Dataset]:
    return list(
        build_secondary_captures(
            case.source,
            case.masks,
            series,
            case.provenance,
            series_instance_uid=series_uid,
            statistics=case.statistics,
            quality=case.quality,
        )
    )


def _pdf(case: LabelledSeries, series: SeriesSpec, series_uid: str, _: Built) -> list[Dataset]:
    return [
        build_pdf_report(
            case.source,
            case.masks,
            case.statistics,
            series,
            case.provenance,
            case.convention,
            series_instance_uid=series_uid,
            sop_instance_uid=hd.UID(),
            quality=case.quality,
        )
    ]


#: The one table of outputs: kind -> its builder (tests check it covers every OutputKind).
BUILDERS: dict[OutputKind, Builder] = {"seg": _seg, "sr": _sr, "sc": _sc, "pdf": _pdf}


def _checked_outputs(outputs: Collection[str]) -> list[OutputKind]:
    unknown = sorted(set(outputs) - set(OUTPUT_KINDS))
    if unknown:
        raise OutputSpecError(
            f"unknown result kinds {unknown} in outputs; known: {list(OUTPUT_KINDS)}"
        )
    wanted = [kind for kind in OUTPUT_KINDS if kind in outputs]
    if "sr" in wanted and "seg" not in wanted:
        wanted.insert(0, "seg")
    return wanted


def write_results(
    source_files: Sequence[Path],
    slices: Sequence[SliceRef],
    labels: sitk.Image,
    convention_et_label: int,
    provenance: AlgorithmProvenance,
    settings: ResultSeriesSettings,
    outputs: Collection[OutputKind],
    out_dir: Path,
    quality: QualityReport | None = None,
    registered: Sequence[RegisteredSeriesLabels] = (),
    preview_dir: Path | None = None,
) -> ResultsRecord:
    """Write the requested result objects of one label map into ``out_dir``.

    Args:
        source_files: the T1c series' files (classic MR, or one Enhanced MR file).
        slices: ``convert_series(source_files).slices``: the source instance and
            frame of each label slice, in volume order.
        labels: integer label map in exactly ``convert_series(source_files).image``'s
            geometry; ``GetArrayFromImage`` is (slice, row, column).
        convention_et_label: 4 (BraTS 2017-2021) or 3 (BraTS 2023+).
        provenance: the algorithm and model, written into every object.
        settings: series numbers, description, manufacturer.
        outputs: which of "seg", "sr", "sc", "pdf" to write.
        out_dir: an existing folder; files are named ``<kind>-<SOPInstanceUID>.dcm``.
        quality: the job's quality report (no flags, no checks when None).
        registered: label maps on series registration moved against the T1c; each gets a
            SEG (kind "seg") of its own when "seg" is among ``outputs``.
        preview_dir: where to draw the dashboard's preview (``preview.write_preview``);
            None draws none.

    Returns:
        The written objects (also iterable as a list) and the region volumes.

    Raises:
        OutputSpecError: for unknown outputs or an invalid label convention.
        OutputError: for a label map that is not on the source grid, label
            values the convention does not define, or a file that cannot be written.
    """
    convention = convention_of(convention_et_label)
    wanted = _checked_outputs(outputs)
    if not out_dir.is_dir():
        raise OutputError(f"output folder {out_dir} does not exist")
    source = load_source_series(source_files, slices)
    check_label_geometry(labels, source)
    masks = region_masks(label_array(labels, convention), convention)
    statistics = region_statistics(masks, voxel_volume_mm3(labels))

    case = LabelledSeries(
        source, masks, statistics, provenance, convention, quality or QualityReport()
    )
    if preview_dir is not None:
        write_preview(source, masks, statistics, case.quality, preview_dir)
    built: dict[OutputKind, list[Dataset]] = {}
    for kind in wanted:
        built[kind] = BUILDERS[kind](case, SeriesSpec.for_kind(settings, kind), hd.UID(), built)

    queued: list[tuple[OutputKind, Role, Dataset]] = [
        (kind, Role.T1C, ds) for kind, datasets in built.items() for ds in datasets
    ]
    if "seg" in outputs:
        queued += [
            ("seg", series.role, _registered_seg(series, convention, provenance, settings))
            for series in registered
        ]
    written: list[WrittenObject] = []
    try:
        for kind, role, dataset in queued:
            _drop_invalid_copied_attributes(dataset)
            path = out_dir / f"{kind}-{dataset.SOPInstanceUID}.dcm"
            _write_atomic(dataset, path)
            written.append(
                WrittenObject(
                    kind=kind,
                    path=path,
                    sop_class_uid=str(dataset.SOPClassUID),
                    sop_instance_uid=str(dataset.SOPInstanceUID),
                    series_instance_uid=str(dataset.SeriesInstanceUID),
                    source_role=role,
                )
            )
        fsync_dir(out_dir)
    except OSError as exc:
        for obj in written:
            obj.path.unlink(missing_ok=True)
        # Still an OSError (not an OutputError): a full or failing disk is transient, and the
        # job runner retries the writing step after a backoff instead of failing the job.
        raise OSError(
            exc.errno, f"writing results into {out_dir} failed: {exc}; nothing was kept"
        ) from exc
    log.info(
        "results written",
        extra={"outputs": wanted, "objects": len(written), "empty_result": statistics.is_empty},
    )
    return ResultsRecord(tuple(written), statistics, provenance)
