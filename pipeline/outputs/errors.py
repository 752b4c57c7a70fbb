"""Errors raised while writing the DICOM result objects.

Each message names the object or region and what to do next, never a patient.
"""

from __future__ import annotations

from segnode.pipeline.errors import PipelineError


class OutputError(PipelineError):
    """A result object could not be built or written (inputs that do not fit together)."""


class OutputSpecError(OutputError):
    """A result specification was invalid when it was constructed."""
