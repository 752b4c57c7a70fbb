"""Fixtures for the node's tests."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest

from segnode.config.settings import Settings
from segnode.node.receiving.receiver import InstanceReceiver
from segnode.node.service import open_storage


@pytest.fixture
def receiver_for(make_settings: Callable[..., Settings]) -> Callable[..., tuple[InstanceReceiver, Any, Any]]:
    """A receiver on a fresh data dir: ``build(**storage_settings) -> (receiver, sessions, store)``."""

    def build(max_dataset_bytes: int | None = None, **storage: object) -> tuple[InstanceReceiver, Any, Any]:
        settings = make_settings(storage=storage)
        _engine, sessions, store = open_storage(settings)
        extra = {} if max_dataset_bytes is None else {"max_dataset_bytes": max_dataset_bytes}
        return InstanceReceiver(store, sessions, settings.storage, **extra), sessions, store

    return build
