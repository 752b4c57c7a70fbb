"""Every output kind has its one builder, series number and label: a new kind cannot be half-added."""

from __future__ import annotations

from segnode.config.settings import ResultSeriesSettings
from segnode.pipeline.outputs.provenance import KIND_LABELS, SeriesSpec
from segnode.pipeline.outputs.writer import BUILDERS
from segnode.vocabulary import OUTPUT_KINDS


def test_every_output_kind_has_a_builder_a_label_and_a_series() -> None:
    assert set(BUILDERS) == set(OUTPUT_KINDS)
    assert set(KIND_LABELS) == set(OUTPUT_KINDS)
    settings = ResultSeriesSettings()
    specs = {kind: SeriesSpec.for_kind(settings, kind) for kind in OUTPUT_KINDS}
    assert len({spec.series_number for spec in specs.values()}) == len(OUTPUT_KINDS)
    for kind, spec in specs.items():
        assert spec.series_number == getattr(settings, f"{kind}_series_number")
        assert f" {KIND_LABELS[kind]} - not for clinical use" in spec.series_description
