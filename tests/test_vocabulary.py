"""The domain's words, defined once (``segnode.vocabulary``): roles, regions, conventions."""

from __future__ import annotations

import pytest

from segnode.vocabulary import (
    ALL_REGIONS,
    BASE_REGIONS,
    CHANNEL_ORDER,
    NESTED_REGION_KEYS,
    NESTED_REGIONS,
    OUTPUT_KINDS,
    REGION_PARTS,
    LabelConvention,
    Region,
    Role,
)


def test_roles_and_the_network_channel_order() -> None:
    assert [role.value for role in Role] == ["t1", "t1c", "t2", "flair"]
    assert CHANNEL_ORDER == (Role.T1, Role.T1C, Role.T2, Role.FLAIR)
    assert Role("t1c") is Role.T1C and Role.T1C == "t1c"


def test_regions_nest_as_brats_defines_them() -> None:
    assert set(BASE_REGIONS) | {Region.TC, Region.WT} == set(ALL_REGIONS) == set(Region)
    assert REGION_PARTS[Region.WT] == BASE_REGIONS
    assert REGION_PARTS[Region.TC] == (Region.NCR, Region.ET)
    assert all(REGION_PARTS[region] == (region,) for region in BASE_REGIONS)
    assert NESTED_REGIONS == (Region.WT, Region.TC, Region.ET)
    assert NESTED_REGION_KEYS == ("wt", "tc", "et") == tuple(r.key for r in NESTED_REGIONS)


@pytest.mark.parametrize(
    ("convention", "et_label"), [(LabelConvention.BRATS_2021, 4), (LabelConvention.BRATS_2023, 3)]
)
def test_label_conventions_differ_only_in_the_et_label(
    convention: LabelConvention, et_label: int
) -> None:
    assert convention.et_label == et_label
    assert convention.labels == {Region.NCR: 1, Region.ED: 2, Region.ET: et_label}
    assert LabelConvention.with_et_label(et_label) is convention
    assert LabelConvention(convention.value) is convention  # "2021" / "2023", as records store it


def test_an_unknown_et_label_is_refused() -> None:
    with pytest.raises(ValueError, match="neither 4"):
        LabelConvention.with_et_label(2)


def test_output_kinds_in_writing_order() -> None:
    assert OUTPUT_KINDS == ("seg", "sr", "sc", "pdf")
