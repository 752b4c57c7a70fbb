"""Errors raised by the imaging and model pipeline.

Each names the step, the series or job (never a patient) and what to do next.
"""

from __future__ import annotations

from segnode.config.errors import SegnodeError


class PipelineError(SegnodeError):
    """Base for pipeline failures."""


class SelectionError(PipelineError):
    """The study lacks a required sequence, or the choice is ambiguous."""


class ConversionError(PipelineError):
    """A series could not become a volume (e.g. inconsistent slice spacing)."""


class BrainExtractionError(PipelineError):
    """Brain extraction produced no usable mask."""


class RegistrationError(PipelineError):
    """Co-registration failed or did not converge."""


class InferenceError(PipelineError):
    """The network could not be run on a volume (wrong shape, channels or settings)."""


class EvaluationError(PipelineError):
    """A prediction and its reference cannot be compared (grids differ, files unmatched)."""
