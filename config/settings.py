"""The validated settings model.

Why pydantic-settings: one declaration gives types, defaults, range checks, the
TOML file source and ``SEGNODE__SECTION__KEY`` environment overrides. Every
model forbids unknown keys, so a typo in a site's file is an error that names
the key instead of a silently ignored option. The defaults here and the values
in ``config/node.toml`` are the same; a test keeps them so.
"""

from __future__ import annotations

import re
import tomllib
from enum import StrEnum
from pathlib import Path
from typing import Annotated, Any, ClassVar, Literal

from pydantic import (
    Field,
    StringConstraints,
    ValidationError,
    field_validator,
    model_validator,
)
from pydantic_settings import (
    BaseSettings,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    TomlConfigSettingsSource,
)
from pydicom.datadict import tag_for_keyword

from segnode.config.destinations import DEFAULT_PROTOCOL, DeliverySettings, destination_problem
from segnode.config.distributed import DistributedSettings
from segnode.config.errors import ConfigError
from segnode.config.fields import AeTitle, Port, PositiveSeconds, Section
from segnode.config.quality import QualitySettings
from segnode.config.web import WebSettings
from segnode.vocabulary import Role

DEFAULT_CONFIG_PATH = Path(__file__).with_name("node.toml")
ENV_PREFIX = "SEGNODE__"

class Peer(Section):
    """A DICOM peer the node knows: a PACS, a modality, a workstation."""

    name: Annotated[str, StringConstraints(min_length=1)]
    ae_title: AeTitle
    host: str | None = None
    """If set, an association from this AE title must come from this address."""
    port: Port | None = None


class ListenerTls(Section):
    """DICOM TLS on the listener (PS3.15 Annex B, the BCP 195 profile)."""

    enabled: bool = False
    cert_file: Path | None = None
    """PEM certificate chain the node presents."""
    key_file: Path | None = None
    """PEM private key of cert_file (keep it 0600)."""
    ca_file: Path | None = None
    """PEM CA bundle that client certificates must chain to."""
    require_client_cert: bool = False
    """Refuse a peer that presents no certificate signed by ca_file (mutual TLS)."""

    @model_validator(mode="after")
    def _complete(self) -> ListenerTls:
        if self.enabled and not (self.cert_file and self.key_file):
            raise ValueError("listener.tls: enabled needs cert_file and key_file")
        if self.require_client_cert and not self.ca_file:
            raise ValueError("listener.tls: require_client_cert needs ca_file")
        return self


class ListenerSettings(Section):
    """The DICOM SCP (``segnode serve``)."""

    ae_title: AeTitle = "SEGNODE"
    extra_ae_titles: list[AeTitle] = ["SEGNODE_PUSH"]
    host: str = "127.0.0.1"
    port: Port = 11112
    require_called_ae: bool = True
    restrict_calling_ae: bool = False
    max_associations: Annotated[int, Field(ge=1, le=1000)] = 10
    acse_timeout_s: PositiveSeconds = 30.0
    dimse_timeout_s: PositiveSeconds = 60.0
    network_timeout_s: PositiveSeconds = 120.0
    max_pdu_bytes: Annotated[int, Field(ge=0)] = 262144
    max_connections_per_address: Annotated[int, Field(ge=1, le=1000)] = 8
    """Open TCP connections one peer address may hold at once (associated or not)."""
    max_pending_connections: Annotated[int, Field(ge=1, le=1000)] = 16
    """Connections that have not yet been accepted as an association; beyond this the oldest
    pending connection from another address is dropped to make room."""
    association_request_timeout_s: PositiveSeconds = 10.0
    """A connection must complete its A-ASSOCIATE-RQ within this many seconds of connecting."""
    pdu_read_timeout_s: PositiveSeconds = 30.0
    """Once a PDU's first byte arrives, the whole PDU must arrive within this many seconds."""
    max_instance_mb: Annotated[int, Field(ge=1)] = 512
    """Largest dataset accepted per C-STORE (after inflating a deflated transfer syntax)."""
    processes: Annotated[int, Field(ge=1, le=32)] = 1
    """Listener processes sharing the port (``SO_REUSEPORT``): the kernel spreads
    associations over them, so parsing and storing use more than one core. The limits above
    (associations, connections per address, pending connections) hold per process."""
    tls: ListenerTls = ListenerTls()

    @property
    def called_ae_titles(self) -> frozenset[str]:
        """Every AE title the node answers to."""
        return frozenset([self.ae_title, *self.extra_ae_titles])


class DuplicatePolicy(StrEnum):
    """What to do when a SOP Instance UID arrives again with different bytes.

    An identical re-send is always acknowledged and ignored.
    """

    KEEP_FIRST = "keep_first"
    KEEP_NEWEST = "keep_newest"


class SqliteSynchronous(StrEnum):
    FULL = "FULL"
    NORMAL = "NORMAL"


class StorageSettings(Section):
    """Where instances, quarantine and the database live."""

    data_dir: Path = Path("segnode-data")
    database_url: str = ""
    min_free_disk_mb: Annotated[int, Field(ge=0)] = 1024
    duplicates: DuplicatePolicy = DuplicatePolicy.KEEP_FIRST
    fsync: bool = True
    sqlite_synchronous: SqliteSynchronous = SqliteSynchronous.FULL
    file_group: str = ""
    """Group that may read the node's files (mode 0640/0750); empty: owner only (0600/0700)."""

    def resolved_database_url(self) -> str:
        """The configured URL, or the embedded SQLite database under ``data_dir``."""
        if self.database_url:
            return self.database_url
        return f"sqlite:///{(self.data_dir / 'segnode.db').resolve()}"


class DeadlineAction(StrEnum):
    """What happens when a study's forced deadline passes before it is complete."""

    PROCEED = "proceed"
    DISCARD = "discard"
    WAIT = "wait"


class LateSeriesPolicy(StrEnum):
    """What happens to instances that arrive after their study fired."""

    NEW_JOB = "new_job"
    ATTACH = "attach"


class CompletionPolicy(Section):
    """When a study counts as complete (DICOM itself never says)."""

    series_quiet_s: PositiveSeconds = 30.0
    study_quiet_s: PositiveSeconds = 60.0
    association_release_hint: bool = True
    release_grace_s: Annotated[float, Field(ge=0)] = 10.0
    fire_on_release_when_complete: bool = True
    """Fire the moment every association that delivered to the study is released, if the study
    then holds T1, T1c, T2 and FLAIR (as identified): no quiet time, no grace. Why: a PACS or a
    radiologist's "send" delivers a study in one association; once it is released and the four
    sequences are there, waiting only delays the result (a later series still reaches the
    study by ``late_series``)."""
    required_series: list[Role] = []
    """Roles that must be present, as sequence identification (``[selection]``) sees them in
    the headers received so far: the same recogniser that later picks the job's series."""
    deadline_s: PositiveSeconds = 3600.0
    deadline_action: DeadlineAction = DeadlineAction.PROCEED


class CompletionSettings(Section):
    check_interval_s: PositiveSeconds = 1.0
    late_series: LateSeriesPolicy = LateSeriesPolicy.NEW_JOB
    profiles: dict[str, CompletionPolicy] = {"default": CompletionPolicy()}

    @field_validator("profiles")
    @classmethod
    def _has_default(cls, profiles: dict[str, CompletionPolicy]) -> dict[str, CompletionPolicy]:
        if "default" not in profiles:
            raise ValueError("a profile named 'default' is required")
        return profiles


class RoutingAction(StrEnum):
    PROCESS = "process"
    IGNORE = "ignore"


def _compile(pattern: str, where: str) -> re.Pattern[str]:
    if len(pattern) > 500:
        raise ValueError(f"{where}: pattern longer than 500 characters")
    try:
        return re.compile(pattern, re.IGNORECASE)
    except re.error as exc:
        raise ValueError(f"{where}: invalid regular expression: {exc}") from exc


class TagCondition(Section):
    """One test on DICOM attributes, by keyword.

    Exactly one of ``equals``, ``one_of``, ``matches`` (a case-insensitive
    regular expression, searched) or ``present`` is given. With several tags
    the condition holds when any of them satisfies it. Nothing is evaluated as
    code.
    """

    tag: list[str]
    equals: str | None = None
    one_of: list[str] | None = None
    matches: str | None = None
    present: bool | None = None
    negate: bool = False

    @field_validator("tag", mode="before")
    @classmethod
    def _one_or_many(cls, value: Any) -> Any:
        return [value] if isinstance(value, str) else value

    @field_validator("tag")
    @classmethod
    def _known_keywords(cls, tags: list[str]) -> list[str]:
        if not tags:
            raise ValueError("at least one tag keyword is required")
        for keyword in tags:
            if tag_for_keyword(keyword) is None:
                raise ValueError(f"{keyword!r} is not a DICOM keyword (e.g. 'BodyPartExamined')")
        return tags

    @model_validator(mode="after")
    def _exactly_one_test(self) -> TagCondition:
        given = [
            name
            for name in ("equals", "one_of", "matches", "present")
            if getattr(self, name) is not None
        ]
        if len(given) != 1:
            raise ValueError(
                f"give exactly one of equals/one_of/matches/present (got {given or 'none'})"
            )
        if self.matches is not None:
            _compile(self.matches, "matches")
        return self


class RoutingRule(Section):
    """A named rule: when every condition holds, the study gets ``action``.

    ``called_ae``/``calling_ae`` restrict the rule to associations addressed to
    (or coming from) those AE titles; empty means any.
    """

    name: Annotated[str, StringConstraints(min_length=1)]
    called_ae: list[AeTitle] = []
    calling_ae: list[AeTitle] = []
    all_of: list[TagCondition] = []
    any_of: list[TagCondition] = []
    action: RoutingAction = RoutingAction.PROCESS
    completion: str = "default"


class RoutingSettings(Section):
    default_action: RoutingAction = RoutingAction.IGNORE
    rules: list[RoutingRule] = []

    @model_validator(mode="after")
    def _unique_names(self) -> RoutingSettings:
        names = [rule.name for rule in self.rules]
        duplicates = sorted({name for name in names if names.count(name) > 1})
        if duplicates:
            raise ValueError(f"rule names must be unique, repeated: {duplicates}")
        return self


class Substitute(Section):
    """One entry of ``[selection] substitutes``: the series of ``stand_in`` replaces ``missing``."""

    missing: Role
    stand_in: Role

    @model_validator(mode="after")
    def _makes_sense(self) -> Substitute:
        if self.missing is Role.T1C:
            raise ValueError("the T1c cannot be substituted")
        if self.missing is self.stand_in:
            raise ValueError(f"{self.missing.value} cannot stand in for itself")
        return self


class SelectionSettings(Section):
    """Sequence identification (T1, T1c, T2, FLAIR): patterns a site may override.

    Patterns are case-insensitive regular expressions searched in
    SeriesDescription + ProtocolName; the physics tags (TR, TE, TI, sequence
    type, contrast agent) are weighed first, the words second. The one recogniser of
    the node: the completion rule's ``required_series`` and the job's select step both
    use it, so a study never waits for a series the job would not pick, or the reverse.
    """

    contrast_pattern: str = (
        r"post|gad|\+ ?c\b|(?<![a-z0-9])(km|ce|gd|mdc)(?![a-z0-9])|contrast|kontrast|t1c"
    )
    pre_contrast_pattern: str = r"(?<![a-z0-9])pre(?![a-z0-9])|nativ|ohne|w/o|without|(?<![a-z0-9])pre[-_ ]?(gad|contrast|km)"
    exclude_pattern: str = (
        r"localizer|localiser|scout|survey|(?<![a-z0-9])loc(?![a-z0-9])|3[-_ ]?plane|calibration|"
        r"asset|sense[-_ ]?ref|(?<![a-z0-9])(mip|mpr|sub|subtraction|reformat)(?![a-z0-9])"
    )
    functional_pattern: str = r"(?<![a-z0-9])(dwi|dti|adc|trace|diff\w*|perf\w*|dsc|dce|bold|fmri|asl|swi|epi|mosaic|tensor)(?![a-z0-9])"
    role_patterns: dict[str, str] = {
        "flair": r"flair|dark[-_ ]?fluid|(?<![a-z0-9])t2.*(?<![a-z0-9])ir(?![a-z0-9])",
        "t2": r"(?<![a-z0-9])t2(w|_?tse|_?fse)?(?![a-z0-9])",
        "t1": r"(?<![a-z0-9])t1(w|c|ce)?(?![a-z0-9])|mprage|mp[-_ ]?rage|tfl|bravo|spgr|ffe|flash|vibe",
    }
    min_images: Annotated[int, Field(ge=1)] = 10
    substitutes: tuple[Substitute, ...] = (
        Substitute(missing=Role.T1, stand_in=Role.T1C),
        Substitute(missing=Role.T2, stand_in=Role.FLAIR),
        Substitute(missing=Role.FLAIR, stand_in=Role.T2),
    )
    """Which present series stands in for a missing one. Why: a result flagged "T1 missing,
    the T1c stood in" serves a reader better than no result; the job's quality report raises
    the flag and recommends review. The T1c never has a stand-in (enhancing tumour is defined
    by contrast); an empty list makes every role required. A list, not a table: a site's
    table would be merged with the defaults, a list replaces them."""

    @property
    def stand_in_for(self) -> dict[Role, Role]:
        """Missing role -> the role standing in for it."""
        return {entry.missing: entry.stand_in for entry in self.substitutes}

    @model_validator(mode="after")
    def _one_stand_in_per_role(self) -> SelectionSettings:
        missing = [entry.missing for entry in self.substitutes]
        if len(set(missing)) != len(missing):
            raise ValueError("selection.substitutes: one stand-in per missing role")
        return self

    @model_validator(mode="after")
    def _patterns_compile(self) -> SelectionSettings:
        for name in (
            "contrast_pattern",
            "pre_contrast_pattern",
            "exclude_pattern",
            "functional_pattern",
        ):
            _compile(getattr(self, name), f"selection.{name}")
        for role, pattern in self.role_patterns.items():
            _compile(pattern, f"selection.role_patterns.{role}")
        return self


class PreprocessingSettings(Section):
    """From four converted series to the network's input (the BraTS convention)."""

    spacing_mm: Annotated[float, Field(gt=0)] = 1.0
    crop_margin_mm: Annotated[float, Field(ge=0)] = 10.0
    brain_extraction_role: Literal["t1c", "t1"] = "t1c"
    atlas_path: str = ""
    """Optional: a T1 atlas (e.g. SRI24 t1) to register the T1c to first, as BraTS does."""
    spacing_policy: Literal["reject", "resample"] = "reject"
    """Series whose slice spacing is not uniform: refuse them, or interpolate."""


class ModelSettings(Section):
    """Which segmentation model the node runs, and how."""

    default: str = "segnode-brats22-v1"
    """Model id: an imported model under <data_dir>/models or a built-in one."""
    ensemble: list[str] = []
    """Further model ids whose outputs are averaged with the default's."""
    tta: bool = True
    """Test-time augmentation: mean over the 8 axis flips (paper section 4)."""
    device: Annotated[str, StringConstraints(pattern=r"^(auto|cpu|cuda(:[0-9]+)?)$")] = "auto"
    """auto (a GPU when present), cpu, cuda or cuda:N (segnode.pipeline.model.device)."""
    backend: Literal["auto", "pytorch", "openvino"] = "auto"
    """Inference engine: auto (OpenVINO on the CPU when its export agrees with PyTorch,
    PyTorch otherwise), pytorch, or openvino (an error where it cannot run);
    segnode.pipeline.model.backend."""
    threshold: Annotated[float, Field(gt=0, lt=1)] | None = None
    """Region probability threshold; None: the model's value tuned on its CV folds."""
    et_threshold: Annotated[float, Field(gt=0, lt=1)] | None = None
    """Threshold of the enhancing-tumour output (the ET/necrosis boundary); None: the model's."""
    et_min_voxels: Annotated[int, Field(ge=0)] | None = None
    """Enhancing tumour smaller than this is relabelled necrosis (0 = off; None: the model's
    tuned value)."""
    min_component_voxels: Annotated[int, Field(ge=0)] | None = None
    """Whole-tumour components smaller than this are removed (0 = off; None: the model's
    tuned value)."""


class ResultSeriesSettings(Section):
    """How the result objects are filed in the source study: series numbers, descriptions.

    Which objects a job writes is not set here: it is every output some destination's
    ``send`` lists (``segnode.node.delivery.wanted_output_kinds``).
    """

    seg_series_number: Annotated[int, Field(ge=1)] = 9901
    sr_series_number: Annotated[int, Field(ge=1)] = 9902
    sc_series_number: Annotated[int, Field(ge=1)] = 9903
    pdf_series_number: Annotated[int, Field(ge=1)] = 9904
    series_description: Annotated[str, StringConstraints(min_length=1, max_length=36)] = (
        "segnode tumour"
    )
    """Prefix of every result series description: "<this> SEG - not for clinical use"."""
    manufacturer: Annotated[str, StringConstraints(min_length=1, max_length=64)] = "segnode"
    registered_series_segs: list[Role] = [Role.FLAIR, Role.T2]
    """Series that also get a SEG in their own geometry when registration moved them against
    the T1c. Why: a viewer draws the T1c's SEG on another series by patient coordinates, so
    on a series the head moved between (found ~16 mm / 8-14° in TCGA-FG-6692) it lies beside
    the lesion; FLAIR is where oedema is read. Empty: only the T1c's SEG."""
    registered_series_min_translation_mm: Annotated[float, Field(ge=0)] = 1.0
    """A series whose registration moved it less than this (at the centre of rotation, the
    brain's centre of mass) and ..."""
    registered_series_min_rotation_deg: Annotated[float, Field(ge=0)] = 1.0
    """... rotated it less than this gets no SEG of its own: the T1c's is right enough."""
    registered_series_first_number: Annotated[int, Field(ge=1)] = 9905
    """Series Number of the FLAIR's SEG; the T2's is one more, the T1's two more (fixed per
    role, so a series keeps its number whichever others moved)."""

    @model_validator(mode="after")
    def _registered_series_fit(self) -> ResultSeriesSettings:
        roles = self.registered_series_segs
        if Role.T1C in roles:
            raise ValueError(
                "result_series.registered_series_segs: the T1c is the reference every other "
                "series is registered to; its SEG is always written"
            )
        if len(set(roles)) != len(roles):
            raise ValueError("result_series.registered_series_segs: each role may be listed once")
        first = self.registered_series_first_number
        taken = {
            self.seg_series_number, self.sr_series_number, self.sc_series_number,
            self.pdf_series_number,
        }
        if roles and taken & set(range(first, first + len(REGISTERED_SERIES_ORDER))):
            raise ValueError(
                f"result_series.registered_series_first_number: {first}..."
                f"{first + len(REGISTERED_SERIES_ORDER) - 1} overlaps the SEG/SR/SC/PDF series "
                "numbers"
            )
        return self


#: Which registered series' SEG gets which Series Number (registered_series_first_number + index).
REGISTERED_SERIES_ORDER: tuple[Role, ...] = (Role.FLAIR, Role.T2, Role.T1)


class JobSettings(Section):
    """How jobs run: worker processes, retries of transient step failures."""

    enabled: bool = True
    """False: the node receives studies and queues jobs but runs none (maintenance, or a
    receive-only node); queued jobs start when it is switched back on."""
    workers: Annotated[int, Field(ge=1, le=64)] = 1
    """Jobs run at the same time, each step in a worker process. The inferring step runs one
    at a time on the node (one device), whatever this is; other jobs' steps go on meanwhile."""
    warm_workers: bool = True
    """Start the worker processes when the node starts and load torch, MONAI, deepbet and the
    configured models in them (again after a worker is replaced), so that the first job does
    not pay for it."""
    keep_intermediates: bool = False
    """Keep a finished job's converted volumes and network input (tens of MB) for debugging."""
    step_timeout_s: PositiveSeconds = 3600.0
    """A step running longer is stopped (its worker killed) and retried as a transient failure."""
    max_attempts: Annotated[int, Field(ge=1)] = 3
    """Attempts per step for transient failures (I/O, worker crash) before the job fails."""
    initial_backoff_s: PositiveSeconds = 10.0
    max_backoff_s: PositiveSeconds = 300.0
    poll_interval_s: PositiveSeconds = 1.0
    executor: Literal["local", "celery"] = "local"
    """``local``: the steps run in this node's worker processes (one machine). ``celery``:
    the node publishes each worker step to ``[distributed]``'s broker and ``segnode worker``
    processes on any machine run it (PostgreSQL and a shared data folder required)."""


class LoggingSettings(Section):
    level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"
    format: Literal["json", "text"] = "json"


class Settings(BaseSettings):
    """Everything the node reads at start; loaded once and passed down."""

    model_config = SettingsConfigDict(
        env_prefix=ENV_PREFIX,
        env_nested_delimiter="__",
        extra="forbid",
        frozen=True,
    )

    toml_source_path: ClassVar[Path | None] = None
    """The TOML file this class reads; set on a per-load subclass by load_settings."""

    listener: ListenerSettings = ListenerSettings()
    peers: list[Peer] = []
    storage: StorageSettings = StorageSettings()
    completion: CompletionSettings = CompletionSettings()
    routing: RoutingSettings = RoutingSettings()
    selection: SelectionSettings = SelectionSettings()
    preprocessing: PreprocessingSettings = PreprocessingSettings()
    model: ModelSettings = ModelSettings()
    result_series: ResultSeriesSettings = ResultSeriesSettings()
    quality: QualitySettings = QualitySettings()
    delivery: DeliverySettings = DeliverySettings()
    jobs: JobSettings = JobSettings()
    web: WebSettings = WebSettings()
    distributed: DistributedSettings = DistributedSettings()
    logging: LoggingSettings = LoggingSettings()

    @model_validator(mode="before")
    @classmethod
    def _destinations_call_as_the_listener(cls, data: Any) -> Any:
        """Give every DIMSE destination without a ``calling_ae`` the node's own AE title.

        Why here: the default of one section's key is another section's value, and the
        merged sources (files, environment, overrides) are only seen together here.
        """
        if not isinstance(data, dict):
            return data
        delivery, listener = data.get("delivery"), data.get("listener")
        if not isinstance(delivery, dict) or not isinstance(delivery.get("destinations"), list):
            return data
        if isinstance(listener, ListenerSettings):
            own_title: Any = listener.ae_title
        elif isinstance(listener, dict) and "ae_title" in listener:
            own_title = listener["ae_title"]
        else:
            own_title = ListenerSettings.model_fields["ae_title"].default
        destinations = [
            {**entry, "calling_ae": own_title}
            if isinstance(entry, dict)
            and entry.get("protocol", DEFAULT_PROTOCOL) == "dimse"
            and entry.get("calling_ae") is None
            else entry
            for entry in delivery["destinations"]
        ]
        return {**data, "delivery": {**delivery, "destinations": destinations}}

    @model_validator(mode="after")
    def _cross_references(self) -> Settings:
        profiles = self.completion.profiles
        for index, rule in enumerate(self.routing.rules):
            if rule.completion not in profiles:
                raise ValueError(
                    f"routing.rules[{index}] ({rule.name!r}): completion profile "
                    f"{rule.completion!r} is not defined under completion.profiles"
                )
        names = [destination.name for destination in self.delivery.destinations]
        if len(set(names)) != len(names):
            raise ValueError("delivery.destinations: each name may be used once")
        titles = [peer.ae_title for peer in self.peers]
        if len(set(titles)) != len(titles):
            raise ValueError("peers: each AE title may be listed once")
        if self.jobs.executor == "celery" and not self.storage.database_url.startswith(
            "postgresql"
        ):
            raise ValueError(
                'jobs.executor = "celery" needs PostgreSQL (storage.database_url = '
                '"postgresql+psycopg://..."): the node and every worker share the job rows, '
                "and SQLite on one machine's disk cannot be shared"
            )
        if self.distributed.cpu_queue == self.distributed.gpu_queue:
            raise ValueError("distributed: cpu_queue and gpu_queue must differ")
        return self

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        # Precedence, highest first: command line, environment, the TOML file.
        toml_file = getattr(settings_cls, "toml_source_path", None)
        sources: list[PydanticBaseSettingsSource] = [init_settings, env_settings]
        if toml_file is not None:
            # A site's file is layered over the shipped defaults (tables merge,
            # lists such as routing.rules replace), so it only states what differs.
            files = (
                [DEFAULT_CONFIG_PATH]
                if toml_file == DEFAULT_CONFIG_PATH
                else [DEFAULT_CONFIG_PATH, toml_file]
            )
            sources.append(TomlConfigSettingsSource(settings_cls, toml_file=files, deep_merge=True))
        return tuple(sources)


#: Options a site's file may still have from an earlier version, and what took their place.
REPLACED_OPTIONS = {
    "result_series.sr_region_reference": (
        "removed: the SR now always references the SEG segments and gives each region one "
        "outline for viewers (docs/architecture.md, Result objects); delete the line"
    ),
    "outputs": (
        "this section is now [result_series] (same keys); which objects a job writes is "
        "each destination's send"
    ),
    "completion.role_patterns": (
        "removed: required_series is checked with sequence identification, whose "
        "description patterns are [selection.role_patterns]"
    ),
}


def _describe(error: Any) -> str:
    location = ".".join(str(part) for part in error["loc"]) or "(top level)"
    message = str(error["msg"]).removeprefix("Value error, ")
    if error["type"] == "extra_forbidden":
        message = REPLACED_OPTIONS.get(
            location, "unknown option (check the spelling against config/node.toml)"
        )
    destination = destination_problem(error)
    if destination is not None:
        location, message = destination
    value = error.get("input")
    shown = "" if isinstance(value, dict | list) or value is None else f" (got {value!r})"
    return f"{location}: {message}{shown}"


def load_settings(path: Path | None = None, overrides: dict[str, Any] | None = None) -> Settings:
    """Read the configuration file, environment and overrides into :class:`Settings`.

    Args:
        path: a TOML file; ``None`` reads the default ``config/node.toml``.
        overrides: nested values from the command line, e.g.
            ``{"listener": {"port": 104}}``; they win over the file and env.

    Raises:
        ConfigError: naming the file and each invalid key with the reason.
    """
    toml_path = Path(path) if path is not None else DEFAULT_CONFIG_PATH
    if not toml_path.is_file():
        raise ConfigError(f"configuration file {toml_path} does not exist")
    try:
        with toml_path.open("rb") as handle:
            tomllib.load(handle)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{toml_path}: not valid TOML: {exc}") from exc

    file_settings = type("Settings", (Settings,), {"toml_source_path": toml_path})
    try:
        settings: Settings = file_settings(**(overrides or {}))
    except ValidationError as exc:
        problems = "; ".join(_describe(error) for error in exc.errors())
        raise ConfigError(
            f"invalid configuration ({toml_path}, {ENV_PREFIX}* environment): {problems}"
        ) from exc
    return settings
