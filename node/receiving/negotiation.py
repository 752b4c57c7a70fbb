"""Presentation-context negotiation that honours the sender's transfer syntax.

Why: pynetdicom's acceptor takes, for each proposed context, the first of ITS
OWN transfer syntaxes that the sender offered. With any fixed order, some
sender transcodes before sending: an Implicit VR or Big Endian file arrives as
Explicit Little Endian, and the stored bytes are not what the PACS holds. Per
association we therefore reorder our supported syntaxes to follow the sender's
own preference (first proposed first), with one policy on top: a lossy syntax
is chosen only when the context offers nothing lossless or uncompressed.
"""

from __future__ import annotations

from collections import defaultdict

from pydicom.uid import (
    HTJ2K,
    JPEG2000,
    JPEG2000MC,
    UID,
    JPEGBaseline8Bit,
    JPEGExtended12Bit,
    JPEGLSNearLossless,
)
from pynetdicom.presentation import PresentationContext, build_context

LOSSY_TRANSFER_SYNTAXES = frozenset(
    {JPEGBaseline8Bit, JPEGExtended12Bit, JPEGLSNearLossless, JPEG2000, JPEG2000MC, HTJ2K}
)


def is_lossy(transfer_syntax: str) -> bool:
    """True for transfer syntaxes that may discard image information."""
    return transfer_syntax in LOSSY_TRANSFER_SYNTAXES


def contexts_preferring_sender(
    requested: list[PresentationContext], supported: list[PresentationContext]
) -> list[PresentationContext]:
    """Our supported contexts, each syntax list reordered by the sender's preference."""
    order: dict[str, list[UID]] = defaultdict(list)
    for context in requested:
        requested_abstract = context.abstract_syntax
        if requested_abstract is None:
            continue  # no abstract syntax: nothing of ours can match it
        for syntax in context.transfer_syntax:
            if syntax not in order[requested_abstract]:
                order[requested_abstract].append(UID(syntax))

    reordered = []
    for context in supported:
        abstract = context.abstract_syntax
        if abstract is None:
            raise ValueError(f"supported context {context.context_id} has no abstract syntax")
        ours = [UID(syntax) for syntax in context.transfer_syntax]
        preferred = [syntax for syntax in order.get(abstract, []) if syntax in ours]
        rest = [syntax for syntax in ours if syntax not in preferred]
        ranked = preferred + rest
        # Stable partition: everything lossless or uncompressed before any lossy syntax.
        partitioned: list[str | UID] = [s for s in ranked if not is_lossy(s)]
        partitioned += [s for s in ranked if is_lossy(s)]
        new = build_context(abstract, partitioned)
        new.scu_role, new.scp_role = context.scu_role, context.scp_role
        reordered.append(new)
    return reordered
