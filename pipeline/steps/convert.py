"""Step ``convert``: each selected series becomes a volume in patient space.

The brain extraction of the preprocessing starts here, in a thread, as soon as its series
(the T1c by default) is converted, and runs while the other three are converted: deepbet is
torch (which releases the GIL) and conversion is mostly pydicom and GDCM. The mask is kept in
the job folder (``volumes/brain_mask.*``) for the preprocess step. Why here and not in
preprocess: the two would otherwise run one after the other for no reason. A failed
extraction does not fail this step: it leaves no mask, and the preprocess step extracts again
and fails there, under its own name, with deepbet's message.
"""

from __future__ import annotations

import contextvars
import logging
import time
from concurrent.futures import Future, ThreadPoolExecutor

import SimpleITK as sitk

from segnode.pipeline.brain_extraction import BrainMask, extract_brain
from segnode.pipeline.conversion import SpacingPolicy, convert_series
from segnode.pipeline.errors import BrainExtractionError
from segnode.pipeline.steps import StepSettings
from segnode.pipeline.workspace import Workspace
from segnode.pipeline.workspace_images import write_brain_mask, write_volume
from segnode.vocabulary import Role

log = logging.getLogger(__name__)


def run(workspace: Workspace, settings: StepSettings) -> dict[str, object]:
    """Convert the four selected series (SimpleITK/GDCM pixels, checked geometry), the brain
    extraction's series first, and extract its brain meanwhile."""
    policy = SpacingPolicy(settings.preprocessing.spacing_policy)
    selection = workspace.read_selection()
    first = Role(settings.preprocessing.brain_extraction_role)
    record: dict[str, object] = {}
    started = time.perf_counter()
    with ThreadPoolExecutor(1, thread_name_prefix="brain-extraction") as pool:
        extraction: Future[BrainMask] | None = None
        series_uid = ""
        for role in (first, *(role for role in Role if role is not first)):
            volume = convert_series(selection.files(role), policy)
            write_volume(workspace, role, volume)
            record[role.value] = volume.as_record()
            if role is first:
                series_uid = volume.series_instance_uid
                # In this step's logging context (job, step), which threads do not inherit.
                extraction = pool.submit(
                    contextvars.copy_context().run,
                    extract_brain,
                    sitk.Cast(volume.image, sitk.sitkFloat32),
                )
        converted_s = time.perf_counter() - started
        assert extraction is not None  # first is one of the four roles
        try:
            brain = extraction.result()
        except BrainExtractionError as exc:
            log.warning(
                "brain extraction during conversion failed; preprocessing retries it",
                extra={"reason": str(exc)},
            )
            record["brain_extraction"] = {"on": first.value, "deferred_to_preprocess": str(exc)}
            return record
    write_brain_mask(workspace, first, series_uid, brain)
    record["brain_extraction"] = {
        "on": first.value,
        **brain.as_record(),
        "converting_s": round(converted_s, 3),
        "waited_after_conversion_s": round(time.perf_counter() - started - converted_s, 3),
    }
    return record
