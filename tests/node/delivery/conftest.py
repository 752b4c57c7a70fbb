"""The scripted peers of the delivery tests, started per module (SCP) or per test (HTTP)."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import pytest

from tests.node.delivery.peers import ScriptedHttp, ScriptedScp


@pytest.fixture(scope="module")
def _running_scp() -> Iterator[ScriptedScp]:
    peer = ScriptedScp()
    yield peer
    peer.server.shutdown()


@pytest.fixture
def scp(_running_scp: ScriptedScp) -> Callable[..., ScriptedScp]:
    """Script the module's SCP: ``scp(statuses, reject=..., calling_aes=...)``."""
    return _running_scp.script


@pytest.fixture
def http() -> Iterator[Callable[..., ScriptedHttp]]:
    """Start scripted HTTP servers: ``http(status, body, headers)``; all stop at teardown."""
    started: list[ScriptedHttp] = []

    def launch(*args: Any, **kwargs: Any) -> ScriptedHttp:
        server = ScriptedHttp(*args, **kwargs)
        started.append(server)
        return server

    yield launch
    for server in started:
        server.stop()
