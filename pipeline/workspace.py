"""A job's working folder: every step's inputs and outputs, as files, and their typed records.

Why files: each step reads what the step before it wrote and nothing else, so a step can
run in any process (a local worker today, a distributed engine later), and a job that was
killed resumes at the step that did not finish: the earlier steps' files are still there.
Every file is written to a temporary name and renamed (``segnode.files.atomic_write``), so a
file either exists whole or not at all. The database only records which step finished; the
files are the data.

Why typed records: these files are the only seam between the pipeline and the node (the
runner records the model, the sending step picks files by kind, ``segnode run`` copies the
objects out). Each JSON file has one frozen model here, validated when it is built and when
it is read, so a step that wrote the wrong shape fails where it wrote it, and a damaged or
hand-edited file fails on read as a :class:`WorkspaceError` naming the file, not as a
``KeyError`` three modules away. The JSON keys are the ones these files always had, so job
folders written before the records existed read back unchanged.

This module is the light part (paths, records, pruning: what the node itself touches; it
imports neither numpy nor SimpleITK); ``pipeline/workspace_images.py`` reads and writes the images and arrays
the steps exchange. Every name in the folder is spelled once, below.

Layout::

    inputs.json                    Inputs: series UIDs and their files (whoever starts the job)
    selection.json                 Selection: role -> series and files, every candidate's reasons
    volumes/<role>.mha             converted volume (LPS, doubles for geometry)
    volumes/<role>.json            VolumeRecord: its series UID, slice -> SOP instance map, notes
    preprocessed/channels.npz      network input channels and the brain mask
    preprocessed/grid.mha          the cropped 1 mm grid (geometry only)
    preprocessed/to_reference.tfm  grid -> T1c space transform
    preprocessed/record.json       what preprocessing did (free-form: the step's own record)
    inference/labels_source.mha    labels in the T1c source geometry
    inference/labels_grid.mha      labels on the 1 mm grid (mapped onto moved series' own grids)
    inference/record.json          InferenceRecord: models (id, version, sha256), labels, device
    outputs/*.dcm                  the DICOM results
    results.json                   Results: the written objects and the volumes per region
    quality.json                   QualityReport: the quality checks, their figures and flags
"""

from __future__ import annotations

import json
from collections.abc import Callable, Collection, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Self, TypeVar

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    JsonValue,
    SerializerFunctionWrapHandler,
    ValidationError,
    model_serializer,
    model_validator,
)

from segnode.files import atomic_write
from segnode.pipeline.errors import PipelineError
from segnode.pipeline.quality.record import QualityReport, TtaAgreement
from segnode.vocabulary import LabelConvention, OutputKind, Region, Role

# -- the names in a job folder (relative to its root) ------------------------------------
INPUTS = "inputs.json"
SELECTION = "selection.json"
VOLUMES = "volumes"
BRAIN_MASK = "volumes/brain_mask.mha"
BRAIN_MASK_RECORD = "volumes/brain_mask.json"
PREPROCESSED_CHANNELS = "preprocessed/channels.npz"
PREPROCESSED_GRID = "preprocessed/grid.mha"
PREPROCESSED_TRANSFORM = "preprocessed/to_reference.tfm"
PREPROCESSING_RECORD = "preprocessed/record.json"
SOURCE_LABELS = "inference/labels_source.mha"
GRID_LABELS = "inference/labels_grid.mha"
INFERENCE_RECORD = "inference/record.json"
OUTPUTS = "outputs"
PREVIEW = "preview"
RESULTS = "results.json"
QUALITY = "quality.json"

#: Most validation problems named in one error message (the rest are counted).
_MAX_PROBLEMS = 5


class WorkspaceError(PipelineError):
    """A step's input file is missing, unreadable or malformed (the step before it did not finish)."""


JsonObject = dict[str, JsonValue]


def jsonable(record: Mapping[str, object]) -> JsonObject:
    """``record`` as plain JSON data, the way the job folder always stored free-form records.

    Why: steps' records hold numpy scalars and paths (``default=str`` turned them into
    strings when these files were written with ``json.dumps``); a record stores what that
    wrote, so old and new files hold the same values.
    """
    converted: JsonObject = json.loads(json.dumps(dict(record), default=str))
    return converted


def _problems(error: ValidationError) -> str:
    """Where and what, without the offending values (they may be paths or descriptions)."""
    found = error.errors(include_input=False, include_url=False)
    named = [f"{'.'.join(str(part) for part in e['loc']) or '(top level)'}: {e['msg']}" for e in found]
    more = len(named) - _MAX_PROBLEMS
    return "; ".join(named[:_MAX_PROBLEMS]) + (f" (and {more} more)" if more > 0 else "")


class JobFileRecord(BaseModel):
    """Base of the job-folder records: frozen, unknown keys refused, JSON as the files always were."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    def to_json(self) -> str:
        """The file's text (two-space indent, keys in field order)."""
        return json.dumps(self.model_dump(mode="json"), indent=2)

    @classmethod
    def from_json(cls, text: str | bytes, *, source: str | None = None) -> Self:
        """Parse and validate a file's text.

        Raises:
            WorkspaceError: the text is not JSON or not this record, naming ``source``
                (the file) and every problem's location.
        """
        return parse_record(cls, text, source=source)


M = TypeVar("M", bound=BaseModel)


def parse_record(model: type[M], text: str | bytes, *, source: str | None = None) -> M:
    """``model`` from a file's text, or a :class:`WorkspaceError` naming ``source`` and every
    problem's location (for records defined outside this module too, e.g. the quality report)."""
    try:
        return model.model_validate_json(text)
    except ValidationError as exc:
        what = source or f"a {model.__name__} record"
        raise WorkspaceError(f"{what} is malformed: {_problems(exc)}") from None


# -- inputs.json -------------------------------------------------------------------------
class InputSeries(JobFileRecord):
    series_instance_uid: str
    files: tuple[Path, ...]


class Inputs(JobFileRecord):
    """The job's starting point: its study and the stored files of each series."""

    study_instance_uid: str
    series: tuple[InputSeries, ...]

    @classmethod
    def of(cls, study_instance_uid: str, series: Mapping[str, Iterable[Path]]) -> Inputs:
        """Series sorted by UID and files by path, so the same study gives the same file."""
        return cls(
            study_instance_uid=study_instance_uid,
            series=tuple(
                InputSeries(series_instance_uid=uid, files=tuple(sorted(files)))
                for uid, files in sorted(series.items())
            ),
        )


# -- selection.json ----------------------------------------------------------------------
class SelectedSeries(JobFileRecord):
    series_instance_uid: str
    description: str
    files: tuple[Path, ...]


class Selection(JobFileRecord):
    """Which series the select step chose for each role, and why (``record``)."""

    roles: dict[Role, SelectedSeries]
    record: JsonObject
    """The role assignment's own record: every candidate, its role or rejection, and reasons."""
    substitutes: dict[Role, Role] = Field(default_factory=dict)
    """A missing role -> the role whose series stands in for it (``roles`` holds that series
    under both); the quality report flags each."""

    def series(self, role: Role) -> SelectedSeries:
        """The series chosen for ``role``.

        Raises:
            WorkspaceError: no series was chosen for it (a selection file from elsewhere).
        """
        try:
            return self.roles[role]
        except KeyError:
            raise WorkspaceError(f"{SELECTION} chose no series for the {role.value} role") from None

    def files(self, role: Role) -> list[Path]:
        """The files of the series chosen for ``role``."""
        return list(self.series(role).files)


# -- volumes/<role>.json -----------------------------------------------------------------
class SliceRecord(JobFileRecord):
    sop_instance_uid: str
    frame: int
    """1-based frame number (1 for single-frame instances)."""
    position_mm: tuple[float, float, float]


class VolumeRecord(JobFileRecord):
    """Where a converted volume's slices came from (the volume itself is the ``.mha``)."""

    series_instance_uid: str
    slices: tuple[SliceRecord, ...]
    notes: tuple[str, ...]


# -- volumes/brain_mask.json ---------------------------------------------------------------
class BrainMaskRecord(JobFileRecord):
    """The brain mask the convert step computed while it converted the other series.

    The preprocess step uses it instead of extracting again; a job folder without one (the
    extraction failed there, or the folder predates the overlap) gets its mask in preprocess.
    """

    on: Role
    """The series the mask was computed on (``[preprocessing] brain_extraction_role``)."""
    series_instance_uid: str
    """That series' UID, so a mask is never applied to another series' volume."""
    tool: str
    threshold: float
    dilate_voxels: int
    device: str
    volume_ml: float
    seconds: float


# -- inference/record.json ---------------------------------------------------------------
class ModelIdentity(JobFileRecord):
    """One model whose weights made the labels: registry id, version, the weights' SHA-256, the engine."""

    id: str
    version: str
    sha256: str = Field(pattern=r"^[0-9a-f]{64}$")
    backend: str = "pytorch"
    """The engine that ran it (``segnode.pipeline.model.backend``); records older than the
    choice were all PyTorch."""
    backend_version: str | None = None
    export_sha256: str | None = Field(default=None, pattern=r"^[0-9a-f]{64}$")
    """SHA-256 of the exported network the engine ran (OpenVINO IR); None for PyTorch."""
    backend_reason: str | None = None
    """Why ``auto`` chose PyTorch, when it did (a GPU, an export OpenVINO refused)."""


class InferenceRecord(JobFileRecord):
    """What the infer step ran and found: the provenance of the labels."""

    models: tuple[ModelIdentity, ...] = Field(min_length=1)
    """The model, or an ensemble's members; the first is the primary (its version and
    checksum label the results)."""
    label_convention: LabelConvention
    grid_label_voxels: dict[int, int]
    """Label value -> voxels on the network's 1 mm grid."""
    postprocessing: JsonObject
    device: str
    tta: bool
    tta_agreement: TtaAgreement | None = None
    """How far the TTA passes (and ensemble members) agree; None with a single pass."""

    @property
    def primary_model(self) -> ModelIdentity:
        return self.models[0]

    @property
    def ensemble_id(self) -> str:
        """The models' ids joined with ``+`` (a single model's id as it is): the job's model id."""
        return "+".join(model.id for model in self.models)


# -- results.json ------------------------------------------------------------------------
class ResultObject(JobFileRecord):
    """One DICOM file the write step wrote into ``outputs/``."""

    kind: OutputKind
    path: Path
    sop_class_uid: str
    sop_instance_uid: str
    series_instance_uid: str
    source_role: Role = Field(default=Role.T1C, exclude_if=lambda role: role is Role.T1C)
    """The series the object lies on: the T1c, or (a SEG only) a series registration moved
    against it. Written only when not the T1c, so the T1c's objects read as they always did."""


class RegionVolume(JobFileRecord):
    voxels: int
    ml: float


class RegionVolumes(JobFileRecord):
    """Tumour volumes per region; in the file, the regions sit beside ``voxel_volume_mm3``."""

    voxel_volume_mm3: float
    regions: dict[Region, RegionVolume]

    @model_validator(mode="before")
    @classmethod
    def _from_file_shape(cls, data: object) -> object:
        if isinstance(data, dict) and "regions" not in data:
            regions = {key: value for key, value in data.items() if key != "voxel_volume_mm3"}
            return {"voxel_volume_mm3": data.get("voxel_volume_mm3"), "regions": regions}
        return data

    @model_serializer(mode="wrap")
    def _to_file_shape(self, handler: SerializerFunctionWrapHandler) -> dict[str, object]:
        data: dict[str, object] = handler(self)
        regions = data.pop("regions")
        return {**data, **(regions if isinstance(regions, dict) else {})}


class Results(JobFileRecord):
    """What the write step produced: the objects, the region volumes, the provenance."""

    objects: tuple[ResultObject, ...]
    volumes: RegionVolumes
    provenance: dict[str, str]
    """Algorithm and model identity as written into the objects."""

    def of_kinds(self, kinds: Collection[OutputKind]) -> list[ResultObject]:
        """The written objects of these kinds, in the order they were written."""
        return [obj for obj in self.objects if obj.kind in kinds]


R = TypeVar("R", bound=BaseModel)


# -- the folder --------------------------------------------------------------------------
@dataclass(frozen=True)
class Workspace:
    """One job's folder; the properties are the only place its paths are built."""

    root: Path

    # -- paths -----------------------------------------------------------------------------
    @property
    def inputs_path(self) -> Path:
        return self.root / INPUTS

    @property
    def selection_path(self) -> Path:
        return self.root / SELECTION

    def volume_path(self, role: Role) -> Path:
        return self.root / VOLUMES / f"{role.value}.mha"

    def volume_record_path(self, role: Role) -> Path:
        return self.root / VOLUMES / f"{role.value}.json"

    @property
    def brain_mask_path(self) -> Path:
        return self.root / BRAIN_MASK

    @property
    def brain_mask_record_path(self) -> Path:
        return self.root / BRAIN_MASK_RECORD

    @property
    def channels_path(self) -> Path:
        return self.root / PREPROCESSED_CHANNELS

    @property
    def grid_path(self) -> Path:
        return self.root / PREPROCESSED_GRID

    @property
    def to_reference_path(self) -> Path:
        return self.root / PREPROCESSED_TRANSFORM

    @property
    def preprocessing_record_path(self) -> Path:
        return self.root / PREPROCESSING_RECORD

    @property
    def source_labels_path(self) -> Path:
        return self.root / SOURCE_LABELS

    @property
    def grid_labels_path(self) -> Path:
        return self.root / GRID_LABELS

    @property
    def inference_record_path(self) -> Path:
        return self.root / INFERENCE_RECORD

    @property
    def outputs_dir(self) -> Path:
        return self.root / OUTPUTS

    @property
    def preview_dir(self) -> Path:
        """The dashboard's result preview (PNGs and ``preview.json``); kept after pruning."""
        return self.root / PREVIEW

    @property
    def results_path(self) -> Path:
        return self.root / RESULTS

    @property
    def quality_path(self) -> Path:
        return self.root / QUALITY

    # -- writing and reading any file ------------------------------------------------------
    def name_of(self, path: Path) -> str:
        """``path`` as the folder names it (``inference/record.json``), for messages."""
        try:
            return str(path.relative_to(self.root))
        except ValueError:
            return str(path)

    def write_file(self, path: Path, write_fn: Callable[[Path], object]) -> Path:
        """Write ``path`` atomically through ``write_fn(temporary_path)``, creating its folder."""
        path.parent.mkdir(parents=True, exist_ok=True)
        return atomic_write(path, write_fn)

    def require_file(self, path: Path) -> Path:
        """``path``, or a :class:`WorkspaceError` saying which step's output is missing."""
        if not path.is_file():
            raise WorkspaceError(
                f"{self.name_of(path)} is missing in the job folder {self.root} "
                "(the step that writes it has not finished)"
            )
        return path

    def _write_text(self, path: Path, text: str) -> Path:
        return self.write_file(path, lambda tmp: tmp.write_text(text))

    def _read_text(self, path: Path) -> str:
        try:
            return self.require_file(path).read_text()
        except (OSError, UnicodeDecodeError) as exc:
            raise WorkspaceError(
                f"{self.name_of(path)} in the job folder {self.root} is unreadable: "
                f"{type(exc).__name__}"
            ) from exc

    def _read(self, path: Path, record: type[R]) -> R:
        return parse_record(
            record, self._read_text(path), source=f"{self.name_of(path)} in the job folder {self.root}"
        )

    # -- the records -----------------------------------------------------------------------
    def write_inputs(self, inputs: Inputs) -> Path:
        return self._write_text(self.inputs_path, inputs.to_json())

    def read_inputs(self) -> Inputs:
        return self._read(self.inputs_path, Inputs)

    def write_selection(self, selection: Selection) -> Path:
        return self._write_text(self.selection_path, selection.to_json())

    def read_selection(self) -> Selection:
        return self._read(self.selection_path, Selection)

    def write_volume_record(self, role: Role, record: VolumeRecord) -> Path:
        return self._write_text(self.volume_record_path(role), record.to_json())

    def read_volume_record(self, role: Role) -> VolumeRecord:
        return self._read(self.volume_record_path(role), VolumeRecord)

    def write_brain_mask_record(self, record: BrainMaskRecord) -> Path:
        return self._write_text(self.brain_mask_record_path, record.to_json())

    def read_brain_mask_record(self) -> BrainMaskRecord | None:
        """The convert step's mask record, or None when it left none."""
        if not self.brain_mask_record_path.is_file():
            return None
        return self._read(self.brain_mask_record_path, BrainMaskRecord)

    def write_preprocessing_record(self, record: Mapping[str, object]) -> Path:
        return self._write_text(
            self.preprocessing_record_path, json.dumps(jsonable(record), indent=2)
        )

    def read_preprocessing_record(self) -> JsonObject:
        path = self.preprocessing_record_path
        try:
            record = json.loads(self._read_text(path))
        except ValueError:
            record = None
        if not isinstance(record, dict):
            raise WorkspaceError(
                f"{self.name_of(path)} in the job folder {self.root} is malformed: "
                "not a JSON object"
            )
        return record

    def write_inference(self, record: InferenceRecord) -> Path:
        return self._write_text(self.inference_record_path, record.to_json())

    def read_inference(self) -> InferenceRecord:
        return self._read(self.inference_record_path, InferenceRecord)

    def write_results(self, results: Results) -> Path:
        return self._write_text(self.results_path, results.to_json())

    def read_results(self) -> Results:
        return self._read(self.results_path, Results)

    def write_quality(self, report: QualityReport) -> Path:
        return self._write_text(self.quality_path, report.model_dump_json(indent=2))

    def read_quality(self) -> QualityReport:
        return self._read(self.quality_path, QualityReport)

    def prune_intermediates(self) -> int:
        """Delete the converted volumes and the network input (tens of MB per job); bytes freed.

        What stays: inputs, selection and every step's record, the label maps (T1c geometry,
        1 mm grid: tens of kB), and the DICOM results, enough to audit a job, to resend its
        results and to write them again.
        """
        freed = 0
        for path in [*(self.root / VOLUMES).glob("*.mha"), self.channels_path]:
            if path.is_file():
                freed += path.stat().st_size
                path.unlink()
        return freed
