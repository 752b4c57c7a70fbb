"""The container image (``deploy/Containerfile``) is built and run: the node serves C-ECHO from it.

Real tools only: Debian's podman builds the image on a base made by ``debootstrap`` (these
machines reach Debian's mirror but no image registry), pip installs the pinned dependencies
(a CPU torch from the machine's wheel folder when there is one), and DCMTK's ``echoscu``
talks to ``segnode serve`` inside the container. ``scripts/test`` installs podman and
debootstrap; the base and podman's layer cache persist between runs (the first run takes
minutes, later ones reuse the dependency layer). The same image's ``segnode worker``
refuses SQLite as the node's does.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import time
from pathlib import Path

import pytest

from tests.helpers import REPO_ROOT, TOOL_MISSING, dcmtk_env, free_port, require_tool

pytestmark = pytest.mark.timeout(1800)

CACHE = REPO_ROOT / ".test-services" / "container"
BASE_IMAGE = "localhost/segnode-test-base:bookworm"
IMAGE = "localhost/segnode-test:latest"
LOCAL_WHEELS = Path("/opt/wheels")
HOST_CA = Path("/etc/ssl/certs/ca-certificates.crt")


def _run(*command: str, timeout_s: float = 1500) -> subprocess.CompletedProcess[str]:
    if command[0] == "podman":
        command = ("podman", "--runtime", "runc", *command[1:])
    return subprocess.run(
        command, capture_output=True, text=True, timeout=timeout_s,
        env={**os.environ, "CONTAINERS_CONF": str(_containers_conf())},
    )


def _containers_conf() -> Path:
    """Podman settings for these machines (Firecracker VMs with hybrid cgroups):

    runc, not crun (crun refuses hybrid cgroup hierarchies), and container rlimits below the
    VM's (podman's defaults raise them, which the VM refuses).
    """
    conf = CACHE / "containers.conf"
    CACHE.mkdir(parents=True, exist_ok=True)
    conf.write_text('[containers]\ndefault_ulimits = ["nofile=4096:4096", "nproc=4096:4096"]\n')
    return conf


def _require_podman() -> None:
    for tool in ("podman", "debootstrap", "runc"):
        if shutil.which(tool) is None:
            pytest.skip(f"{TOOL_MISSING}: {tool} is not installed; `scripts/test` installs it")
    probe = _run("podman", "info", timeout_s=60)
    if probe.returncode != 0:
        pytest.skip(f"CONTAINERS UNAVAILABLE: `podman info` failed here: {probe.stderr.strip()[-400:]}")


def _base_image() -> None:
    if _run("podman", "image", "exists", BASE_IMAGE).returncode == 0:
        return
    tarball = CACHE / "bookworm-minbase.tar"
    if not tarball.is_file():
        rootfs = CACHE / "rootfs"
        shutil.rmtree(rootfs, ignore_errors=True)
        rootfs.mkdir(parents=True)
        made = _run("debootstrap", "--variant=minbase", "bookworm", str(rootfs), "http://deb.debian.org/debian")
        assert made.returncode == 0, made.stderr[-2000:]
        packed = _run("tar", "-C", str(rootfs), "-cf", str(tarball), ".")
        assert packed.returncode == 0, packed.stderr[-1000:]
        shutil.rmtree(rootfs, ignore_errors=True)
    imported = _run("podman", "import", str(tarball), BASE_IMAGE)
    assert imported.returncode == 0, imported.stderr[-1000:]


@pytest.fixture(scope="module")
def image() -> str:
    _require_podman()
    CACHE.mkdir(parents=True, exist_ok=True)
    _base_image()
    command = [
        "podman", "build", "--network", "host", "-f", "deploy/Containerfile", "-t", IMAGE,
        "--build-arg", f"BASE={BASE_IMAGE}",
    ]
    if LOCAL_WHEELS.is_dir():  # the machine's CPU torch build, instead of PyPI's CUDA one
        command += ["-v", f"{LOCAL_WHEELS}:/wheels:ro", "--build-arg", "PIP_FIND_LINKS=/wheels"]
    if HOST_CA.is_file():  # this machine's CA bundle (its egress may re-sign TLS)
        command += ["-v", f"{HOST_CA}:/host-ca.crt:ro", "--build-arg", "PIP_CERT=/host-ca.crt"]
    built = _run(*command, str(REPO_ROOT))
    assert built.returncode == 0, built.stdout[-3000:] + built.stderr[-3000:]
    return IMAGE


def test_the_image_runs_the_node_which_answers_c_echo(image: str, tmp_path: Path) -> None:
    port = free_port()
    data = tmp_path / "data"
    data.mkdir(mode=0o777)
    data.chmod(0o777)  # the image runs as its own segnode user
    name = f"segnode-test-{port}"
    started = _run(
        "podman", "run", "-d", "--rm", "--name", name, "--network", "host",
        "-v", f"{data}:/var/lib/segnode", "-e", "SEGNODE__WEB__ENABLED=false",
        image, "serve", "--port", str(port), "--data-dir", "/var/lib/segnode",
        timeout_s=120,
    )
    assert started.returncode == 0, started.stderr
    try:
        echoscu = require_tool("echoscu")
        deadline = time.monotonic() + 180
        answered = None
        while time.monotonic() < deadline:
            answered = subprocess.run(
                [echoscu, "-aec", "SEGNODE", "127.0.0.1", str(port)],
                capture_output=True, text=True, env=dcmtk_env(), timeout=30,
            )
            if answered.returncode == 0:
                break
            time.sleep(1)
        logs = _run("podman", "logs", name, timeout_s=30).stderr
        assert answered is not None and answered.returncode == 0, logs[-3000:]
        assert (data / "segnode.db").is_file()  # the node in the image wrote its database here
    finally:
        _run("podman", "stop", "-t", "10", name, timeout_s=60)


def test_the_images_worker_refuses_sqlite(image: str) -> None:
    refused = _run("podman", "run", "--rm", "--network", "host", image, "worker", timeout_s=300)
    assert refused.returncode == 2
    assert "needs the node's PostgreSQL database" in refused.stderr
