"""The DICOM result objects: SEG, TID 1500 SR, secondary capture and encapsulated PDF.

``write_results`` is the entry point the write step (``pipeline/steps/write.py``) calls; the builders and
specs are exported for tests and for callers that want one object only.
"""

from segnode.pipeline.outputs.errors import OutputError, OutputSpecError
from segnode.pipeline.outputs.provenance import AlgorithmProvenance, SeriesSpec
from segnode.pipeline.outputs.regions import (
    RegionStatistics,
    RegionVolume,
    volumes_ml,
)
from segnode.pipeline.outputs.seg import TUMOUR_SEGMENTS, SegmentSpec
from segnode.pipeline.outputs.writer import ResultsRecord, WrittenObject, write_results

__all__ = [
    "TUMOUR_SEGMENTS",
    "AlgorithmProvenance",
    "OutputError",
    "OutputSpecError",
    "RegionStatistics",
    "RegionVolume",
    "ResultsRecord",
    "SegmentSpec",
    "SeriesSpec",
    "WrittenObject",
    "volumes_ml",
    "write_results",
]
