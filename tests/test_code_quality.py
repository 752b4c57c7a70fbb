"""The one-way data flow of the design card, enforced: node -> storage/pipeline -> config."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def test_import_layers_hold() -> None:
    lint_imports = shutil.which("lint-imports") or str(Path(sys.executable).with_name("lint-imports"))
    result = subprocess.run([lint_imports], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "KEPT" in result.stdout


def test_mypy_strict_passes() -> None:
    mypy = str(Path(sys.executable).with_name("mypy"))
    result = subprocess.run([mypy], cwd=REPO, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stdout[-3000:]


def test_ruff_passes() -> None:
    ruff = str(Path(sys.executable).with_name("ruff"))
    result = subprocess.run([ruff, "check", "node", "storage", "config", "pipeline"], cwd=REPO,
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stdout[-3000:]
