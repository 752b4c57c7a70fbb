"""Field types and the base of every settings section, shared by the settings modules."""

from __future__ import annotations

from typing import Annotated

from pydantic import BaseModel, ConfigDict, Field, StringConstraints

# DICOM AE titles: 1-16 characters of the default character repertoire, no
# backslash, no leading or trailing spaces (PS3.5 6.2, VR AE).
AeTitle = Annotated[
    str,
    StringConstraints(min_length=1, max_length=16, pattern=r"^[!-\[\]-~]([ -\[\]-~]*[!-\[\]-~])?$"),
]
Port = Annotated[int, Field(ge=1, le=65535)]
PositiveSeconds = Annotated[float, Field(gt=0)]


class Section(BaseModel):
    """A TOML section: unknown keys are errors (a typo names its key), values never change."""


    model_config = ConfigDict(extra="forbid", frozen=True)


NonEmpty = Annotated[str, StringConstraints(min_length=1)]
