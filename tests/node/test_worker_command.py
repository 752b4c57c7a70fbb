"""``segnode worker`` refuses, with the reason and the fix, to start where no step could run.

(Its normal life, running steps from RabbitMQ, is tests/distributed.)
"""

from __future__ import annotations

import logging
import sys
import threading
import warnings
from collections.abc import Iterator
from pathlib import Path

import pytest
from typer.testing import CliRunner

from segnode.node.cli import app
from segnode.node.distributed.shared_dir import write_marker


@pytest.fixture(autouse=True)
def _restore_logging() -> Iterator[None]:
    """``segnode worker`` sets up the process's logging (root at INFO to stderr, hooks), as a
    command should; undone here so later in-process CLI tests see their own output only."""
    root = logging.getLogger()
    saved = (root.handlers[:], root.level, warnings.showwarning, sys.excepthook,
             threading.excepthook, sys.unraisablehook)
    yield
    root.handlers[:], level = saved[0], saved[1]
    root.setLevel(level)
    warnings.showwarning, sys.excepthook, threading.excepthook, sys.unraisablehook = saved[2:]


def invoke(tmp_path: Path, toml: str, *args: str) -> tuple[int, str]:
    config = tmp_path / "worker.toml"
    config.write_text(toml)
    result = CliRunner().invoke(
        app, ["worker", "--config", str(config), "--data-dir", str(tmp_path / "data"), *args]
    )
    return result.exit_code, result.output


def test_a_worker_on_sqlite_is_refused(tmp_path: Path) -> None:
    code, output = invoke(tmp_path, "")
    assert code == 2
    assert "needs the node's PostgreSQL database" in output


def test_a_worker_without_the_shared_data_folder_is_refused_naming_it(
    tmp_path: Path, postgres_url: str
) -> None:
    toml = f'[storage]\ndatabase_url = "{postgres_url}"\n'
    code, output = invoke(tmp_path, toml)
    assert code == 2
    assert f"storage.data_dir {tmp_path / 'data'} is not the node's data folder" in output
    assert "Mount the node's data folder" in output


def test_unknown_queues_are_refused(tmp_path: Path, postgres_url: str) -> None:
    (tmp_path / "data").mkdir()
    write_marker(tmp_path / "data")
    toml = f'[storage]\ndatabase_url = "{postgres_url}"\n'
    code, output = invoke(tmp_path, toml, "--queues", "cpu,tpu")
    assert code == 2
    assert "--queues takes cpu and/or gpu" in output
