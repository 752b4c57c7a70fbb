"""Where results go: DIMSE and STOW-RS destinations, a union told apart by ``protocol``.

Why a discriminated union: each protocol has exactly the keys it needs (a DIMSE destination
has a host, port and AE title; a STOW-RS one has a URL), so a missing key is an error at load
time that names the destination and the key, and the delivery clients never re-check.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import Field, StringConstraints, field_validator, model_validator

from segnode.config.fields import AeTitle, NonEmpty, Port, PositiveSeconds, Section
from segnode.vocabulary import OutputKind


class DestinationTls(Section):
    """DICOM TLS towards one DIMSE destination."""

    enabled: bool = False
    ca_file: Path | None = None
    """PEM CA bundle the destination's certificate must chain to; unset: the system store."""
    cert_file: Path | None = None
    """PEM client certificate, for a destination that requires one."""
    key_file: Path | None = None
    check_hostname: bool = True
    """Check that the certificate names destination.host."""

    @model_validator(mode="after")
    def _pair(self) -> DestinationTls:
        if bool(self.cert_file) != bool(self.key_file):
            raise ValueError("destination tls: cert_file and key_file go together")
        return self


class DestinationBase(Section):
    """What every destination has, whatever its protocol."""

    name: Annotated[str, StringConstraints(min_length=1, max_length=64)]
    send: list[OutputKind] = ["seg", "sr"]
    """Which outputs this destination receives; "sc"/"pdf" for viewers without SEG support."""
    timeout_s: PositiveSeconds = 60.0

    @model_validator(mode="after")
    def _sends_something(self) -> DestinationBase:
        if not self.send:
            raise ValueError(f"destination {self.name!r}: send lists nothing")
        if "sr" in self.send and "seg" not in self.send:
            # The SR's volumes reference the SEG's segments (dcmqi/Slicer read them there):
            # a destination holding the SR without its SEG holds a dangling reference.
            raise ValueError(
                f"destination {self.name!r}: the SR refers to the SEG; send \"seg\" with \"sr\" "
                "(or \"pdf\" for a report without images)"
            )
        return self


class DimseDestination(DestinationBase):
    """A DICOM AE that receives the results by C-STORE."""

    protocol: Literal["dimse"] = "dimse"
    ae_title: AeTitle
    host: NonEmpty
    port: Port
    calling_ae: AeTitle
    """The AE title segnode calls as (the PACS must know it). Required here, optional in a
    site's file: :class:`Settings` fills in ``listener.ae_title`` where a destination leaves
    it out, so the client never falls back on a default of its own."""
    tls: DestinationTls = DestinationTls()


class StowDestination(DestinationBase):
    """A DICOMweb server that receives the results by STOW-RS."""

    protocol: Literal["stow-rs"] = "stow-rs"
    url: NonEmpty
    """The studies endpoint, e.g. http://pacs:8042/dicom-web/studies."""


#: Where results go, told apart by ``protocol`` (a site's file may leave it out: "dimse"), so
#: each kind has exactly the keys it needs and a missing one is an error naming that key.
Destination = Annotated[DimseDestination | StowDestination, Field(discriminator="protocol")]
#: ``protocol`` of a destination that does not state one.
DEFAULT_PROTOCOL = "dimse"
#: The model of each ``protocol`` (for error messages; keep it beside the union above).
DESTINATION_MODELS: dict[str, type[DestinationBase]] = {
    "dimse": DimseDestination,
    "stow-rs": StowDestination,
}


class DeliverySettings(Section):
    """Retries for sending results; rejections are permanent and never retried."""

    destinations: list[Destination] = []
    max_attempts: Annotated[int, Field(ge=1)] = 10
    initial_backoff_s: PositiveSeconds = 5.0
    max_backoff_s: PositiveSeconds = 600.0

    @field_validator("destinations", mode="before")
    @classmethod
    def _dimse_unless_stated(cls, destinations: Any) -> Any:
        # The discriminator must be present to choose a model; the TOML may omit it.
        if not isinstance(destinations, list):
            return destinations
        return [
            {"protocol": DEFAULT_PROTOCOL, **entry} if isinstance(entry, dict) else entry
            for entry in destinations
        ]


def destination_problem(error: Any) -> tuple[str, str] | None:
    """Location and message of an error inside one destination, without pydantic's tag.

    pydantic locates ``delivery.destinations.0.dimse.host``; a site's file has no "dimse"
    level, and the reader wants to know which destination (by name) lacks what.
    """
    loc = error["loc"]
    if len(loc) < 5 or loc[:2] != ("delivery", "destinations") or loc[3] not in DESTINATION_MODELS:
        return None
    index, protocol, key = loc[2], loc[3], ".".join(str(part) for part in loc[4:])
    location = f"delivery.destinations.{index}.{key}"
    model = DESTINATION_MODELS[protocol]
    if error["type"] == "missing" and isinstance(error.get("input"), dict):
        # What a site's file must state: calling_ae is required too, but Settings fills it in.
        needs = [
            name
            for name, field in model.model_fields.items()
            if field.is_required() and name not in {*DestinationBase.model_fields, "calling_ae"}
        ]
        listed = ", ".join(needs[:-1]) + (" and " if len(needs) > 1 else "") + needs[-1]
        name = error["input"].get("name")
        return location, f"destination {name!r}: {protocol} needs {listed} ({key} is missing)"
    if error["type"] == "extra_forbidden":
        options = ", ".join(model.model_fields)
        return location, f"not an option of a {protocol} destination (its options: {options})"
    return None
