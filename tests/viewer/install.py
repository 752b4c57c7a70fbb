"""Where scripts/install-viewer put the viewer, and a loud skip when it did not.

The installer (called by scripts/test) writes into ``.test-services/viewer/``: the built OHIF
viewer (npm ``@ohif/app``, pinned in ``pins.env``) and ``playwright-core``; Debian's Chromium is at
``/usr/bin/chromium``. A failed install leaves its reason in ``install-error.txt``.
"""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.helpers import REPO_ROOT

PINS_FILE = Path(__file__).resolve().parent / "pins.env"
CACHE = REPO_ROOT / ".test-services" / "viewer"
CHROMIUM = Path("/usr/bin/chromium")
#: The skip label (tests/conftest.py groups loud skips by their upper-case label).
VIEWER_MISSING = "VIEWER MISSING"


def pins() -> dict[str, str]:
    """``pins.env``'s ``KEY=VALUE`` lines."""
    values = {}
    for line in PINS_FILE.read_text().splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            key, _, value = line.partition("=")
            values[key.strip()] = value.strip()
    return values


@dataclass(frozen=True)
class ViewerInstall:
    ohif_dist: Path
    playwright_core: Path
    chromium: Path
    node: str
    ohif_version: str


def _version(package_json: Path) -> str | None:
    try:
        return str(json.loads(package_json.read_text())["version"])
    except (OSError, ValueError, KeyError):
        return None


def find_install() -> tuple[ViewerInstall | None, list[str]]:
    """The installed viewer, or None and what is missing."""
    pinned = pins()
    ohif = CACHE / f"ohif-app-{pinned['OHIF_APP_VERSION']}"
    playwright = CACHE / "node" / "node_modules" / "playwright-core"
    node = shutil.which("node")
    missing = []
    if not CHROMIUM.is_file():
        missing.append(f"{CHROMIUM} (Debian chromium)")
    if node is None:
        missing.append("node (Debian nodejs)")
    if _version(ohif / "package.json") != pinned["OHIF_APP_VERSION"] or not (ohif / "dist" / "index.html").is_file():
        missing.append(f"@ohif/app {pinned['OHIF_APP_VERSION']} in {ohif}")
    if _version(playwright / "package.json") != pinned["PLAYWRIGHT_CORE_VERSION"]:
        missing.append(f"playwright-core {pinned['PLAYWRIGHT_CORE_VERSION']} in {playwright}")
    if missing or node is None:
        return None, missing
    return ViewerInstall(ohif / "dist", playwright, CHROMIUM, node, pinned["OHIF_APP_VERSION"]), []


def require_viewer() -> ViewerInstall:
    """The installed viewer, or a loud skip that says what is missing and why."""
    install, missing = find_install()
    if install is not None:
        return install
    error_file = CACHE / "install-error.txt"
    why = ""
    if error_file.is_file():
        why = " Last install failed: " + "; ".join(error_file.read_text().split("\n")).strip("; ") + "."
    pytest.skip(
        f"{VIEWER_MISSING}: {', '.join(missing)}.{why} `scripts/install-viewer` (run by "
        "`scripts/test`) installs them."
    )
