"""Loading a model folder (``registry.load_model``, the one loader of the node, ``predict`` and
``train --init-weights``): the checksum gate and the errors that name what is wrong."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from segnode.pipeline.model.errors import (
    CorruptModelError,
    InvalidManifestError,
    WeightsMismatchError,
)
from segnode.pipeline.model.registry import load_model
from tests.pipeline.model.tiny_model import tiny_network, write_model_folder


def test_a_model_folder_loads_with_its_weights(tmp_path: Path) -> None:
    written = write_model_folder(tmp_path / "model", seed=3)
    loaded = load_model(tmp_path / "model")
    manifest, network = loaded.manifest, loaded.network
    assert manifest == written
    assert not network.training
    expected = tiny_network(seed=3).state_dict()
    loaded = network.state_dict()
    assert loaded.keys() == expected.keys()
    assert all(torch.equal(loaded[name], expected[name]) for name in expected)


def test_changed_weight_bytes_fail_the_checksum(tmp_path: Path) -> None:
    manifest = write_model_folder(tmp_path / "model")
    weights = tmp_path / "model" / manifest.weights_file
    data = bytearray(weights.read_bytes())
    data[len(data) // 2] ^= 0xFF
    weights.write_bytes(bytes(data))
    with pytest.raises(CorruptModelError, match="checksum mismatch") as caught:
        load_model(tmp_path / "model")
    assert manifest.weights_sha256 in str(caught.value)


def test_missing_or_invalid_pieces_are_named(tmp_path: Path) -> None:
    with pytest.raises(InvalidManifestError, match="does not exist"):
        load_model(tmp_path / "nowhere")
    (tmp_path / "empty").mkdir()
    with pytest.raises(InvalidManifestError, match=r"no manifest\.json"):
        load_model(tmp_path / "empty")

    folder = tmp_path / "model"
    manifest = write_model_folder(folder)
    document = json.loads((folder / "manifest.json").read_text())
    (folder / "manifest.json").write_text(json.dumps({**document, "weights_file": "../x.pt"}))
    with pytest.raises(InvalidManifestError, match="outside the folder"):
        load_model(folder)
    (folder / "manifest.json").write_text(json.dumps({**document, "output_channels": ["wt"]}))
    with pytest.raises(InvalidManifestError, match="not a valid model manifest"):
        load_model(folder)

    manifest.write(folder)
    (folder / manifest.weights_file).unlink()
    with pytest.raises(CorruptModelError, match="missing"):
        load_model(folder)


def test_weights_that_do_not_fit_the_architecture_are_refused(tmp_path: Path) -> None:
    folder = tmp_path / "model"
    manifest = write_model_folder(folder)
    # A correct checksum, but the manifest now claims 16 filters for 8-filter weights.
    wider = manifest.architecture.model_copy(update={"init_filters": 16})
    manifest.model_copy(update={"architecture": wider}).write(folder)
    with pytest.raises(WeightsMismatchError, match="do not fit"):
        load_model(folder)
