"""Errors raised by the imaging and model pipeline.

Each names the step, the series or job (never a patient) and what to do next.
"""

from __future__ import annotations

from segnode.config.errors import SegnodeError


class PipelineError(SegnodeError):
    """Base for pipeline failures."""


class SelectionError(PipelineError):
    """The study lacks a required sequence, or the choice is ambiguous."""


class SequencesMissingError(SelectionError):
    """The study lacks a sequence the model needs: the job is *not applicable*, not failed.

    Why its own class: with the default routing every brain MR reaches the node (an fMRI
    or a diffusion-only study too), and such a study is not a fault of the node or of the
    study; the job runner ends it in ``not_applicable`` so that real failures stand out.
    ``missing`` names the roles; ``series`` the study's series as selection saw them
    (description, UID, what it was taken for). Both survive the trip from the worker
    process (``__reduce__``).
    """

    def __init__(
        self, message: str, missing: tuple[str, ...], series: tuple[dict[str, str], ...]
    ) -> None:
        super().__init__(message)
        self.missing = missing
        self.series = series

    def __reduce__(
        self,
    ) -> tuple[
        type[SequencesMissingError], tuple[str, tuple[str, ...], tuple[dict[str, str], ...]]
    ]:
        return (type(self), (str(self), self.missing, self.series))


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
