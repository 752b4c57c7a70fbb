"""Fixtures shared by the whole suite."""

from __future__ import annotations

import os
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pydicom
import pytest
from sqlalchemy import create_engine, text
from sqlalchemy.exc import OperationalError

from segnode.config.settings import Settings, load_settings
from segnode.node.service import Node, start_node
from tests.helpers import free_port

# The four-series TCGA study fixture (tcga_study, tcga_native), for every test folder.
pytest_plugins = ["tests.fixtures.study_fixtures"]

POSTGRES_ADMIN_URL = os.environ.get(
    "SEGNODE_TEST_POSTGRES_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/postgres"
)


@pytest.fixture(autouse=True, scope="session")
def _strict_pydicom() -> Iterator[None]:
    """Like highdicom's suite: what we write must be valid, not merely readable."""
    previous = pydicom.config.settings.writing_validation_mode
    pydicom.config.settings.writing_validation_mode = pydicom.config.RAISE
    yield
    pydicom.config.settings.writing_validation_mode = previous


def deep_merge(base: dict[str, Any], extra: dict[str, Any]) -> dict[str, Any]:
    merged = dict(base)
    for key, value in extra.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = deep_merge(merged[key], value)
        else:
            merged[key] = value
    return merged


FAST_COMPLETION = {
    "check_interval_s": 0.2,
    "profiles": {
        "default": {
            "series_quiet_s": 1.0,
            "study_quiet_s": 1.5,
            "association_release_hint": True,
            "release_grace_s": 0.5,
            "required_series": [],
            "deadline_s": 600.0,
            "deadline_action": "proceed",
        }
    },
}


@pytest.fixture
def make_settings(tmp_path: Path) -> Callable[..., Settings]:
    """Settings on a fresh data dir and port; keyword dicts are merged in."""

    def build(**sections: Any) -> Settings:
        overrides = deep_merge(
            {
                "storage": {"data_dir": str(tmp_path / "data"), "min_free_disk_mb": 1},
                "listener": {"port": free_port(), "acse_timeout_s": 5, "dimse_timeout_s": 10},
                "logging": {"level": "INFO"},
                # Receiving tests look at queued jobs; tests of the pipeline turn jobs on.
                "jobs": {"enabled": False},
            },
            sections,
        )
        return load_settings(None, overrides)

    return build


@pytest.fixture
def start(make_settings: Callable[..., Settings]) -> Iterator[Callable[..., Node]]:
    """Start in-process nodes; all are stopped at teardown."""
    nodes: list[Node] = []

    def launch(settings: Settings | None = None, **sections: Any) -> Node:
        node = start_node(settings or make_settings(**sections))
        nodes.append(node)
        return node

    yield launch
    for node in nodes:
        node.stop()


@pytest.fixture(scope="session")
def postgres_url() -> Iterator[str]:
    """A fresh PostgreSQL database for this run, dropped afterwards."""
    admin = create_engine(POSTGRES_ADMIN_URL, isolation_level="AUTOCOMMIT")
    name = f"segnode_test_{uuid.uuid4().hex[:12]}"
    try:
        with admin.connect() as connection:
            connection.execute(text(f'CREATE DATABASE "{name}"'))
    except OperationalError as exc:
        pytest.skip(
            f"POSTGRESQL UNAVAILABLE at {POSTGRES_ADMIN_URL}: {exc.orig}. "
            "`scripts/test` installs and starts it; set SEGNODE_TEST_POSTGRES_URL to use another."
        )
    yield POSTGRES_ADMIN_URL.rsplit("/", 1)[0] + f"/{name}"
    with admin.connect() as connection:
        connection.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
    admin.dispose()


@pytest.fixture(params=["sqlite", "postgresql"])
def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """Both supported backends; storage tests run against each."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'segnode.db'}"
    base: str = request.getfixturevalue("postgres_url")
    # A fresh schema per test keeps tests independent on one database.
    schema = f"t_{uuid.uuid4().hex[:10]}"
    engine = create_engine(base, isolation_level="AUTOCOMMIT")
    with engine.connect() as connection:
        connection.execute(text(f'CREATE SCHEMA "{schema}"'))
    engine.dispose()
    return f"{base}?options=-csearch_path%3D{schema}"
