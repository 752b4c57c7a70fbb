"""Errors raised while registering, verifying and loading segmentation models.

Each message names the model id (or the bundle path), what is wrong and what to do
next; none of them concerns a patient, so they are safe to log at any level.
"""

from __future__ import annotations

from segnode.pipeline.errors import PipelineError


class ModelError(PipelineError):
    """Base for model registry and model loading failures."""


class ModelNotFoundError(ModelError):
    """No model with the requested id is registered (the message lists those that are)."""


class ModelExistsError(ModelError):
    """A model with this id is already registered; ids are never silently replaced,
    because jobs record the id and checksum of the weights they ran with."""


class CorruptModelError(ModelError):
    """The weights file is missing or its sha256 differs from the manifest's."""


class InvalidManifestError(ModelError):
    """A ``manifest.json`` is missing, unreadable or fails validation."""


class WeightsMismatchError(ModelError):
    """The weights do not fit the architecture the manifest declares (missing or
    unexpected parameters, wrong shapes), or are not a state_dict at all."""


class BundleImportError(ModelError):
    """A MONAI bundle cannot become a segnode model (missing files, an unsupported
    network, configuration this importer will not evaluate)."""


class ChannelNameError(BundleImportError):
    """A bundle's channel name maps to no input role or output region."""


class DeviceError(ModelError):
    """The configured torch device is unknown or not available on this machine
    (``segnode.pipeline.model.device``)."""


class BackendError(ModelError):
    """The configured inference backend cannot run this model here (OpenVINO asked for on a
    GPU, an export OpenVINO cannot convert, or one that disagrees with PyTorch)."""
