"""The inference backend: OpenVINO on the CPU when its export agrees with PyTorch, PyTorch otherwise.

The equality test runs the shipped default model on real BraTS cases (../shared/data/brats)
through the node's path with both engines; the export and policy tests use the tiny random
model (synthetic weights: what they check does not depend on the values).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import pytest
import torch

from segnode.config.settings import ModelSettings
from segnode.pipeline.model import openvino_network
from segnode.pipeline.model.backend import Backend, on_backend
from segnode.pipeline.model.errors import BackendError
from segnode.pipeline.model.registry import ModelRegistry, load_model, node_registry
from segnode.pipeline.model.segmentation import (
    SegmentationRequest,
    labels_from,
    region_probabilities,
    segment,
)
from segnode.pipeline.training.brats_data import find_case, load_case
from segnode.pipeline.training.prediction import brain_box
from segnode.pipeline.workspace import ModelIdentity
from segnode.vocabulary import LabelConvention
from tests.helpers import SHARED_DATA, require_data
from tests.pipeline.model.tiny_model import write_model_folder

BRATS = SHARED_DATA / "brats"
CPU = torch.device("cpu")


@pytest.fixture()
def tiny(tmp_path: Path) -> Path:
    write_model_folder(tmp_path / "tiny")
    return tmp_path / "tiny"


def test_the_export_has_the_same_bytes_every_time_and_is_cached_by_checksum(tiny: Path, tmp_path: Path) -> None:
    loaded = load_model(tiny)
    first = openvino_network.export_ir(load_model(tiny).network, 4)
    second = openvino_network.export_ir(load_model(tiny).network, 4)
    assert first.sha256 == second.sha256 and first.weights == second.weights and first.xml == second.xml

    cache = tmp_path / "exports"
    cached = openvino_network.cached_export(loaded.network, 4, cache, loaded.sha256)
    assert cached.sha256 == first.sha256
    [folder] = cache.iterdir()
    assert folder.name == f"{loaded.sha256[:16]}-openvino-{openvino_network.OPENVINO_VERSION}-r1"
    record = json.loads((folder / "export.json").read_text())
    assert record == {"weights_sha256": loaded.sha256, "sha256": first.sha256, "openvino": openvino_network.OPENVINO_VERSION}

    # An altered cached IR is never used: it is exported again, with the original bytes.
    weights = bytearray((folder / "model.bin").read_bytes())
    weights[100] ^= 0xFF
    (folder / "model.bin").write_bytes(bytes(weights))
    again = openvino_network.cached_export(load_model(tiny).network, 4, cache, loaded.sha256)
    assert again.sha256 == first.sha256 and (folder / "model.bin").read_bytes() == first.weights


def test_auto_runs_openvino_on_the_cpu_and_the_job_record_names_it(tmp_path: Path) -> None:
    write_model_folder(tmp_path / "source")
    ModelRegistry(tmp_path / "data" / "models").add_folder(tmp_path / "source")
    image = np.random.default_rng(0).normal(size=(4, 40, 48, 32)).astype(np.float32)
    roles = ("t1", "t1c", "t2", "flair")
    results = {
        backend: segment(
            SegmentationRequest(
                image=image, roles=roles, data_dir=tmp_path / "data",
                model=ModelSettings(default="tiny-random-test", tta=True, device="cpu", backend=backend),
            )
        )
        for backend in ("auto", "pytorch")
    }
    [on_openvino] = results["auto"].models
    [on_pytorch] = results["pytorch"].models
    [export_folder] = (tmp_path / "data" / "model-exports").iterdir()
    recorded = json.loads((export_folder / "export.json").read_text())
    assert on_openvino["backend"] == "openvino" and on_openvino["backend_version"] == openvino_network.OPENVINO_VERSION
    assert on_openvino["export_sha256"] == recorded["sha256"] and on_openvino["sha256"] == recorded["weights_sha256"]
    assert on_pytorch["backend"] == "pytorch" and "export_sha256" not in on_pytorch
    assert ModelIdentity.model_validate(on_openvino).export_sha256 == recorded["sha256"]
    # The same labels from both engines (random weights: the probabilities sit near 0.5,
    # the hardest case for a threshold, and still at most a few voxels differ).
    differing = np.count_nonzero(results["auto"].labels != results["pytorch"].labels)
    assert differing <= 0.001 * image[0].size


def test_openvino_is_refused_by_name_on_a_gpu_and_auto_keeps_pytorch_there(tiny: Path, tmp_path: Path) -> None:
    loaded = load_model(tiny)
    gpu = torch.device("cuda")  # only its type is read: no GPU needed
    exports = tmp_path / "exports"
    with pytest.raises(BackendError, match='backend = "openvino" runs on the CPU'):
        on_backend(loaded, "openvino", gpu, exports)
    same, choice = on_backend(loaded, "auto", gpu, exports)
    assert same is loaded and choice.name is Backend.PYTORCH and choice.reason == "cuda device"
    assert not exports.exists()  # nothing exported


def test_an_export_that_disagrees_with_pytorch_is_never_used(
    tiny: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(openvino_network, "MAX_PROBE_DIFFERENCE", -1.0)  # any difference fails
    loaded = load_model(tiny)
    same, choice = on_backend(loaded, "auto", CPU, tmp_path)
    assert same is loaded and choice.name is Backend.PYTORCH
    assert choice.reason.startswith("OpenVINO refused: the OpenVINO export differs from PyTorch by")
    with pytest.raises(BackendError, match="model tiny-random-test: the OpenVINO export differs"):
        on_backend(load_model(tiny), "openvino", CPU, tmp_path)


def test_openvino_sends_no_telemetry_and_writes_nothing_in_home(tiny: Path) -> None:
    """OpenVINO's conversion tool loads a Google Analytics client that writes ~/intel."""
    with tempfile.TemporaryDirectory() as home:
        script = (
            "import sys; from pathlib import Path; "
            "from segnode.pipeline.model import openvino_network as o; "
            "from segnode.pipeline.model.registry import load_model; "
            f"o.export_ir(load_model(Path({str(tiny)!r})).network, 4); "
            "import openvino.tools.ovc.convert_impl as c; "
            "print(sys.modules['openvino_telemetry'], c.tm.__name__)"
        )
        done = subprocess.run(
            [sys.executable, "-c", script], env={**os.environ, "HOME": home}, capture_output=True, text=True, check=True
        )
        assert done.stdout.split() == ["None", "openvino.tools.ovc.telemetry_stub"]
        assert list(Path(home).iterdir()) == []


@pytest.mark.parametrize("case_id", ["Brats18_CBICA_AQR_1", "Brats18_TCIA10_639_1"])
def test_openvino_labels_equal_pytorch_labels_on_real_cases(case_id: str, tmp_path: Path) -> None:
    """The adoption bar of issue 13: Dice >= 0.999 per region between the engines, on the
    shipped default model, real BraTS cases and the node's path (TTA off to keep it short;
    bench/backends.py measures it with TTA)."""
    case = require_data(BRATS / case_id)
    registry = node_registry(tmp_path / "data")
    reference = registry.load("segnode-brats22-v1", CPU)
    openvino_model, choice = on_backend(
        registry.load("segnode-brats22-v1", CPU), "openvino", CPU, tmp_path / "exports"
    )
    assert choice.name is Backend.OPENVINO
    roles = reference.manifest.input_channels
    image, _ = load_case(find_case(case), roles)
    cropped = np.ascontiguousarray(image[(slice(None), *brain_box(image))])
    settings = ModelSettings()
    outputs = {}
    for name, model in (("pytorch", reference), ("openvino", openvino_model)):
        probabilities, _ = region_probabilities([model], cropped, roles, tta=False, device=CPU)
        outputs[name] = (probabilities, labels_from(probabilities, reference, settings, LabelConvention.BRATS_2021)[0])
    assert np.abs(outputs["pytorch"][0] - outputs["openvino"][0]).max() < 1e-2
    for values in ((1, 2, 4), (1, 4), (4,)):  # WT, TC, ET
        expected, got = (np.isin(outputs[name][1], values) for name in ("pytorch", "openvino"))
        assert expected.sum() > 1000  # a real tumour, so the Dice means something
        dice = 2 * np.count_nonzero(expected & got) / (expected.sum() + got.sum())
        assert dice >= 0.999, (values, dice)
