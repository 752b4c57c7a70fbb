"""Map the free-text channel names of third-party models onto segnode's roles and regions.

Why a table and not substring tests: "T2 FLAIR" contains "t2" and "T1 pre-contrast"
contains "contrast", so matching pieces of names picks the wrong sequence. Names are
compared after lower-casing, spelling "tumour" as "tumor" and dropping every character
that is not a letter or digit ("T1-Gd", "t1_gd" and "T1 Gd" are all ``t1gd``). A name
with a parenthesised abbreviation ("Tumor core (TC)") is tried whole, then by its parts.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import TypeVar

from segnode.pipeline.model.errors import ChannelNameError
from segnode.vocabulary import Region, Role

INPUT_SPELLINGS: dict[Role, frozenset[str]] = {
    Role.FLAIR: frozenset(
        {
            "flair",
            "t2flair",
            "t2wflair",
            "flairt2",
            "t2f",
            "fla",
            "fluidattenuatedinversionrecovery",
            "t2fluidattenuatedinversionrecovery",
        }
    ),
    Role.T1: frozenset(
        {
            "t1",
            "t1w",
            "t1n",
            "t1native",
            "nativet1",
            "t1pre",
            "t1wpre",
            "t1precontrast",
            "t1noncontrast",
            "t1weighted",
        }
    ),
    Role.T1C: frozenset(
        {
            "t1c",
            "t1ce",
            "t1wce",
            "t1gd",
            "t1wgd",
            "t1cgd",
            "t1gad",
            "t1gado",
            "t1gadolinium",
            "t1contrast",
            "t1wcontrast",
            "t1contrastenhanced",
            "t1withcontrast",
            "t1enhanced",
            "t1post",
            "t1wpost",
            "t1postcontrast",
            "t1postgd",
            "t1postgadolinium",
        }
    ),
    Role.T2: frozenset({"t2", "t2w", "t2weighted"}),
}
"""Accepted spellings per input role (after normalisation)."""

REGION_SPELLINGS: dict[Region, frozenset[str]] = {
    Region.WT: frozenset({"wt", "wholetumor", "completetumor"}),
    Region.TC: frozenset({"tc", "tumorcore"}),
    Region.ET: frozenset({"et", "enhancingtumor", "gdenhancingtumor", "activetumor"}),
}
"""Accepted spellings per nested output region (after normalisation)."""

_PARENTHESISED = re.compile(r"\(([^)]*)\)")


def normalise_channel_name(name: str) -> str:
    """``"T1-Gd"`` -> ``"t1gd"``; ``"Enhancing tumour"`` -> ``"enhancingtumor"``."""
    lowered = name.lower().replace("tumour", "tumor")
    return re.sub(r"[^a-z0-9]", "", lowered)


def _candidates(name: str) -> list[str]:
    outside = _PARENTHESISED.sub(" ", name)
    inside = _PARENTHESISED.findall(name)
    return [normalise_channel_name(part) for part in (outside, *inside) if part.strip()]


_Target = TypeVar("_Target", Role, Region)


def _lookup(name: str, table: Mapping[_Target, frozenset[str]]) -> _Target | None:
    for candidate in _candidates(name):
        for target, spellings in table.items():
            if candidate in spellings:
                return target
    return None


def _name(target: Role | Region) -> str:
    """How manifests write a role (``t1c``) or a nested region (``wt``)."""
    return target.key if isinstance(target, Region) else target.value


def _spellings_hint(table: Mapping[Role, frozenset[str]] | Mapping[Region, frozenset[str]]) -> str:
    return "; ".join(
        f"{_name(target)}: {', '.join(sorted(names))}" for target, names in table.items()
    )


def input_role(name: str, *, where: str = "") -> str:
    """The segnode role (t1, t1c, t2, flair) of an input channel called ``name``.

    Args:
        name: the channel's name as the model's metadata writes it (e.g. ``"T1c"``).
        where: names the channel in the error message (e.g. ``"input channel 0 of
            bundle brats_mri_segmentation"``).

    Raises:
        ChannelNameError: the name maps to no role; the message names it and lists
            the accepted spellings.
    """
    role = _lookup(name, INPUT_SPELLINGS)
    if role is None:
        raise ChannelNameError(
            f"{where or 'input channel'} is named {name!r}, which is not a known spelling of "
            f"t1, t1c, t2 or flair (accepted, ignoring case and punctuation: "
            f"{_spellings_hint(INPUT_SPELLINGS)}); pass the roles explicitly "
            f"(--input-channels) if the model really takes these sequences"
        )
    return role.value


def output_region(name: str, *, where: str = "") -> str:
    """The nested region (wt, tc, et) of an output channel called ``name``.

    Raises:
        ChannelNameError: the name maps to no region, e.g. a softmax model's
            "background" or "edema" channel; this node runs sigmoid region outputs only.
    """
    region = _lookup(name, REGION_SPELLINGS)
    if region is None:
        raise ChannelNameError(
            f"{where or 'output channel'} is named {name!r}, which is not one of the nested "
            f"regions whole tumor, tumor core, enhancing tumor (accepted, ignoring case and "
            f"punctuation: {_spellings_hint(REGION_SPELLINGS)}); this node runs models with "
            f"one sigmoid output per nested region"
        )
    return region.key
