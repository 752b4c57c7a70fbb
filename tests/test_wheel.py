"""The wheel a site would install: built from this checkout, installed into a fresh venv, run.

Why a real build and a real install: with ``scripts/setup``'s editable install everything is
found in the source tree, so a package-data line or a package left out of the wheel goes
unnoticed until a node installed with ``pip install`` looks for its default model. This test
builds the wheel exactly as a release would (``pip wheel``, no network), checks what is inside,
installs it into a venv of its own and runs two commands there from outside the repository.

The fresh venv borrows the project venv's third-party packages through a ``.pth`` file that
names ``.venv``'s site-packages: a plain path line puts the folder on ``sys.path`` without
processing the ``.pth`` files inside it, so the project's editable ``segnode`` finder stays
out, and nothing (pynetdicom, torch, ...) is downloaded or installed twice. Marked slow (the
central hook in tests/conftest.py): about 30 s on 2 cores, most of it importing torch.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import sysconfig
import zipfile
from pathlib import Path

import pytest

from tests.helpers import REPO_ROOT

#: What a checkout may hold that is not source: build outputs (a stale ``build/lib`` would put
#: since-deleted modules into the wheel), caches, virtual environments and node data.
NOT_SOURCE = shutil.ignore_patterns(
    ".git", ".venv", "build", "dist", "*.egg-info", "__pycache__", "*.pyc", ".mypy_cache",
    ".ruff_cache", ".pytest_cache", ".test-services", "segnode-data",
)
BUILTIN_MODELS = REPO_ROOT / "pipeline" / "model" / "builtin"
MIGRATIONS = REPO_ROOT / "storage" / "migrations"
#: Import names another distribution could also install; the wheel must not claim them.
GENERIC_NAMES = ("node", "pipeline", "storage", "config")


def pip(*args: str | Path, python: Path | None = None) -> subprocess.CompletedProcess[str]:
    """Run the project venv's pip offline (``--python`` points it at another interpreter)."""
    target = () if python is None else ("--python", str(python))
    command = [sys.executable, "-m", "pip", "--disable-pip-version-check", *target, *map(str, args)]
    result = subprocess.run(command, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, f"{' '.join(command)}\n{result.stdout}\n{result.stderr}"
    return result


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The wheel, built from a clean copy of the checkout (symlinks kept, as git keeps them)."""
    source = tmp_path_factory.mktemp("source") / "segnode"
    shutil.copytree(REPO_ROOT, source, symlinks=True, ignore=NOT_SOURCE)
    dist = tmp_path_factory.mktemp("dist")
    pip("wheel", "--no-deps", "--no-build-isolation", "--no-index", "--wheel-dir", dist, source)
    (built,) = dist.glob("segnode-*.whl")
    return built


@pytest.fixture(scope="module")
def fresh_venv(wheel: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A new venv with only the wheel installed; third-party packages come from .venv."""
    venv = tmp_path_factory.mktemp("fresh") / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", venv], check=True, timeout=120)
    python = venv / "bin" / "python"
    # Installed before the .pth exists: pip then sees no segnode at all (the project venv has an
    # editable one it must neither count as installed nor uninstall).
    pip("install", "--no-deps", "--no-index", wheel, python=python)
    site_packages = run_python(python, "import sysconfig; print(sysconfig.get_path('purelib'))")
    dependencies = sysconfig.get_path("purelib")  # the project venv's site-packages
    (Path(site_packages) / "project-venv-dependencies.pth").write_text(dependencies + "\n")
    return venv


def run_python(python: Path, code: str) -> str:
    result = subprocess.run([python, "-c", code], capture_output=True, text=True, timeout=120,
                            cwd=python.parent)
    assert result.returncode == 0, result.stderr
    return result.stdout.strip()


def segnode(venv: Path, cwd: Path, *args: str) -> subprocess.CompletedProcess[str]:
    """The installed ``segnode`` console script, run from ``cwd`` without the repo's environment."""
    env = {key: value for key, value in os.environ.items()
           if not key.startswith("SEGNODE__") and key not in ("PYTHONPATH", "VIRTUAL_ENV")}
    result = subprocess.run([venv / "bin" / "segnode", *args], cwd=cwd, env=env,
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, f"segnode {' '.join(args)}\n{result.stdout}\n{result.stderr}"
    return result


def test_the_wheel_installs_one_top_level_name(wheel: Path) -> None:
    with zipfile.ZipFile(wheel) as archive:
        tops = {name.split("/", 1)[0] for name in archive.namelist()}
    assert tops == {"segnode", wheel.name.split("-py3")[0] + ".dist-info"}, tops
    assert not tops & set(GENERIC_NAMES)


def test_the_wheel_carries_models_configuration_and_migrations(wheel: Path) -> None:
    with zipfile.ZipFile(wheel) as archive:
        names = set(archive.namelist())
    models = sorted(folder.name for folder in BUILTIN_MODELS.iterdir() if folder.is_dir())
    assert models, f"no built-in model under {BUILTIN_MODELS}"
    expected = {
        f"segnode/pipeline/model/builtin/{model}/{file}"
        for model in models
        for file in ("manifest.json", "model.pt", "MODEL_CARD.md")
    }
    expected |= {"segnode/config/node.toml", "segnode/storage/migrations/env.py",
                 "segnode/storage/migrations/script.py.mako"}
    web = REPO_ROOT / "node" / "web"
    expected |= {
        f"segnode/node/web/{path.relative_to(web)}"
        for folder in ("templates", "static")
        for path in (web / folder).iterdir()
    }
    revisions = sorted((MIGRATIONS / "versions").glob("*.py"))
    assert revisions
    expected |= {f"segnode/storage/migrations/versions/{path.name}" for path in revisions}
    assert expected <= names, sorted(expected - names)


#: Run in the fresh venv: where segnode, its models and a dependency were imported from.
PROBE = """
import importlib.util, json, sys
import pynetdicom, segnode
from segnode.pipeline.model.registry import BUILTIN_MODELS
print(json.dumps({
    "segnode": segnode.__file__,
    "version": segnode.__version__,
    "builtin": str(BUILTIN_MODELS),
    "pynetdicom": pynetdicom.__file__,
    "generic": [name for name in ("node", "pipeline", "storage", "config")
                if importlib.util.find_spec(name)],
    "editable": [name for name in sys.modules if name.startswith("__editable__")],
}))
"""


def test_the_installed_package_is_the_wheel_not_the_checkout(fresh_venv: Path) -> None:
    facts = json.loads(run_python(fresh_venv / "bin" / "python", PROBE))
    assert Path(facts["segnode"]).is_relative_to(fresh_venv), facts
    assert Path(facts["builtin"]).is_relative_to(fresh_venv), facts
    assert facts["version"] == "0.1.0", facts  # read from the wheel's metadata
    # Dependencies are the project venv's, not copies.
    assert Path(facts["pynetdicom"]).is_relative_to(Path(sysconfig.get_path("purelib"))), facts
    assert facts["generic"] == [], facts
    assert facts["editable"] == [], facts  # the project venv's .pth files were not processed


def test_check_config_runs_from_outside_the_repository(fresh_venv: Path, tmp_path: Path) -> None:
    result = segnode(fresh_venv, tmp_path, "check-config")
    settings = json.loads(result.stdout)
    assert settings["storage"]["data_dir"] == "segnode-data"  # the packaged node.toml's default
    assert settings["listener"]["ae_title"] == "SEGNODE"


def test_models_verify_finds_the_packaged_models(fresh_venv: Path, tmp_path: Path) -> None:
    for folder in sorted(path for path in BUILTIN_MODELS.iterdir() if path.is_dir()):
        checksum = json.loads((folder / "manifest.json").read_text())["weights_sha256"]
        result = segnode(fresh_venv, tmp_path, "models", "verify", folder.name,
                         "--data-dir", str(tmp_path / "data"))
        assert result.stdout.strip() == f"OK {folder.name} sha256 {checksum}"
