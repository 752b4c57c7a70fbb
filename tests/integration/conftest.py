"""Fixtures shared by the integration tests."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.dcmtk_peers import Storescp


@pytest.fixture
def storescp(tmp_path: Path) -> Iterator[Callable[..., Storescp]]:
    """Start storescp peers with the given options; all are stopped at teardown."""
    started: list[Storescp] = []

    def launch(*options: str) -> Storescp:
        peer = Storescp(tmp_path / f"storescp{len(started)}", *options)
        started.append(peer)
        return peer

    yield launch
    for peer in started:
        peer.stop()
