"""The model registry and MONAI bundle import, on bundles built here in the real format.

The bundle mirrors the MONAI model zoo's ``brats_mri_segmentation`` 0.4.2
(``configs/metadata.json`` with its channel_def strings, ``configs/inference.json``
with a SegResNet ``network_def``, ``models/model.pt`` a bare state_dict), with 8
initial filters instead of 16 to keep the tests fast.
"""

from __future__ import annotations

import copy
import hashlib
import importlib.util
import json
import shutil
from pathlib import Path
from typing import Any

import pytest
import torch
import typer
from monai.networks.nets.segresnet import SegResNet
from typer.testing import CliRunner

from segnode.node.cli.models import register
from segnode.pipeline.model.bundle.channel_names import input_role, output_region
from segnode.pipeline.model.errors import (
    BundleImportError,
    ChannelNameError,
    CorruptModelError,
    ModelExistsError,
    ModelNotFoundError,
    WeightsMismatchError,
)
from segnode.pipeline.model.registry import ModelRegistry

BUNDLE = "brats_mri_segmentation"

NETWORK_DEF: dict[str, Any] = {
    "_target_": "SegResNet",
    "blocks_down": [1, 2, 2, 4],
    "blocks_up": [1, 1, 1],
    "init_filters": 8,
    "in_channels": 4,
    "out_channels": 3,
    "dropout_prob": 0.2,
}

# Field for field as in Project-MONAI/model-zoo models/brats_mri_segmentation/configs/
# metadata.json (version 0.4.2), changelog shortened.
METADATA: dict[str, Any] = {
    "schema": "https://github.com/Project-MONAI/MONAI-extra-test-data/releases/download/0.8.1/meta_schema_20220324.json",
    "version": "0.4.2",
    "changelog": {"0.4.2": "fix mgpu finalize issue", "0.1.0": "complete the model package"},
    "monai_version": "1.2.0rc4",
    "pytorch_version": "1.13.1",
    "numpy_version": "1.22.2",
    "optional_packages_version": {"nibabel": "4.0.1", "pytorch-ignite": "0.4.9"},
    "name": "BraTS MRI segmentation",
    "task": "Multimodal Brain Tumor segmentation",
    "description": "A pre-trained model for volumetric (3D) segmentation of brain tumor subregions from multimodal MRIs based on BraTS 2018 data",
    "authors": "MONAI team",
    "copyright": "Copyright (c) MONAI Consortium",
    "data_source": "https://www.med.upenn.edu/sbia/brats2018/data.html",
    "data_type": "nibabel",
    "image_classes": "4 channel data, T1c, T1, T2, FLAIR at 1x1x1 mm",
    "label_classes": "3 channel data, channel 0 for Tumor core, channel 1 for Whole tumor, channel 2 for Enhancing tumor",
    "pred_classes": "3 channels data, same as label_classes",
    "eval_metrics": {
        "val_mean_dice": 0.8518,
        "val_mean_dice_tc": 0.8559,
        "val_mean_dice_wt": 0.9026,
        "val_mean_dice_et": 0.7905,
    },
    "intended_use": "This is an example, not to be used for diagnostic purposes",
    "references": [
        "Myronenko, Andriy. '3D MRI brain tumor segmentation using autoencoder regularization.' 2018."
    ],
    "network_data_format": {
        "inputs": {
            "image": {
                "type": "image",
                "format": "magnitude",
                "modality": "MR",
                "num_channels": 4,
                "spatial_shape": ["8*n", "8*n", "8*n"],
                "dtype": "float32",
                "value_range": [],
                "is_patch_data": True,
                "channel_def": {"0": "T1c", "1": "T1", "2": "T2", "3": "FLAIR"},
            }
        },
        "outputs": {
            "pred": {
                "type": "image",
                "format": "segmentation",
                "num_channels": 3,
                "spatial_shape": ["8*n", "8*n", "8*n"],
                "dtype": "float32",
                "value_range": [0, 1],
                "is_patch_data": True,
                "channel_def": {"0": "Tumor core", "1": "Whole tumor", "2": "Enhancing tumor"},
            }
        },
    },
}


def inference_config(network_def: dict[str, Any]) -> dict[str, Any]:
    """The parts of the real inference.json the importer reads, plus a `$` entry it must not."""
    return {
        "imports": ["$import glob", "$import os"],
        "bundle_root": ".",
        "device": "$torch.device('cuda:0' if torch.cuda.is_available() else 'cpu')",
        "network_def": network_def,
        "network": "$@network_def.to(@device)",
        "preprocessing": {
            "_target_": "Compose",
            "transforms": [
                {"_target_": "LoadImaged", "keys": "image", "image_only": False},
                {
                    "_target_": "NormalizeIntensityd",
                    "keys": "image",
                    "nonzero": True,
                    "channel_wise": True,
                },
            ],
        },
    }


@pytest.fixture(scope="module")
def original() -> torch.nn.Module:
    torch.manual_seed(0)
    network = SegResNet(
        spatial_dims=3,
        init_filters=8,
        in_channels=4,
        out_channels=3,
        dropout_prob=0.2,
        blocks_down=(1, 2, 2, 4),
        blocks_up=(1, 1, 1),
    )
    return network.eval()


def write_bundle(
    parent: Path,
    state: object,
    *,
    metadata: dict[str, Any] | None = None,
    network_def: dict[str, Any] | None = None,
) -> Path:
    folder = parent / BUNDLE
    (folder / "configs").mkdir(parents=True)
    (folder / "models").mkdir()
    (folder / "docs").mkdir()
    (folder / "configs" / "metadata.json").write_text(json.dumps(metadata or METADATA, indent=4))
    (folder / "configs" / "inference.json").write_text(
        json.dumps(inference_config(network_def or NETWORK_DEF), indent=4)
    )
    (folder / "docs" / "license.txt").write_text("Apache-2.0\n")
    torch.save(state, folder / "models" / "model.pt")
    return folder


@pytest.fixture
def bundle(tmp_path: Path, original: torch.nn.Module) -> Path:
    return write_bundle(tmp_path / "src", original.state_dict())


@pytest.fixture
def registry(tmp_path: Path) -> ModelRegistry:
    return ModelRegistry(tmp_path / "data" / "models")


def sample() -> torch.Tensor:
    return torch.randn(1, 4, 16, 16, 16, generator=torch.Generator().manual_seed(1))


def test_bundle_import_maps_the_real_channel_defs(bundle: Path, registry: ModelRegistry) -> None:
    manifest = registry.import_monai_bundle(bundle)
    assert manifest.id == "brats_mri_segmentation-0.4.2"
    assert manifest.input_channels == ("t1c", "t1", "t2", "flair")
    assert manifest.output_channels == ("tc", "wt", "et")
    assert manifest.architecture.name == "SegResNet"
    assert manifest.architecture.init_filters == 8
    assert manifest.weights_dtype == "float32"
    assert manifest.source == "monai-bundle:brats_mri_segmentation 0.4.2"
    assert manifest.intended_use.startswith("This is an example")
    assert manifest.intended_use.endswith("Not for clinical use.")
    assert manifest.training_data == METADATA["data_source"]
    assert manifest.metrics["reported_by_bundle"] == METADATA["eval_metrics"]
    expected = hashlib.sha256((bundle / "models" / "model.pt").read_bytes()).hexdigest()
    assert manifest.weights_sha256 == expected
    folder = registry.root / manifest.id
    assert (folder / "model.pt").read_bytes() == (bundle / "models" / "model.pt").read_bytes()
    assert (folder / "monai_bundle" / "docs" / "license.txt").is_file()
    assert registry.list() == [manifest]
    assert registry.get(manifest.id) == manifest
    assert [p.name for p in registry.root.iterdir()] == [manifest.id]  # no staging left


def test_zip_import_loads_a_network_equal_to_the_original(
    bundle: Path, registry: ModelRegistry, original: torch.nn.Module
) -> None:
    archive = shutil.make_archive(
        str(bundle.parent / f"{BUNDLE}_v0.4.2"), "zip", root_dir=bundle.parent, base_dir=BUNDLE
    )
    manifest = registry.import_monai_bundle(Path(archive), model_id="brats-zoo")
    assert manifest.id == "brats-zoo"
    assert manifest.input_channels == ("t1c", "t1", "t2", "flair")
    loaded = registry.load("brats-zoo", "cpu")
    assert not loaded.network.training
    assert loaded.sha256 == manifest.weights_sha256
    assert loaded.path == registry.root / "brats-zoo" / "model.pt"
    with torch.no_grad():
        assert torch.equal(loaded.network(sample()), original(sample()))


def test_float16_weights_load_into_a_float32_network(
    tmp_path: Path, registry: ModelRegistry, original: torch.nn.Module
) -> None:
    half = {name: tensor.half() for name, tensor in original.state_dict().items()}
    manifest = registry.import_monai_bundle(write_bundle(tmp_path, {"model": half, "epoch": 3}))
    assert manifest.weights_dtype == "float16"
    # The checkpoint dict was unwrapped and saved as the bare state_dict every loader reads.
    installed = torch.load(registry.root / manifest.id / "model.pt", weights_only=True)
    assert installed.keys() == half.keys()
    network = registry.load(manifest.id).network
    assert {p.dtype for p in network.parameters()} == {torch.float32}
    with torch.no_grad():
        torch.testing.assert_close(network(sample()), original(sample()), atol=5e-2, rtol=5e-2)


def test_a_corrupted_byte_is_refused_naming_both_checksums(
    bundle: Path, registry: ModelRegistry
) -> None:
    manifest = registry.import_monai_bundle(bundle)
    weights = registry.root / manifest.id / "model.pt"
    data = bytearray(weights.read_bytes())
    data[len(data) // 2] ^= 0xFF
    weights.write_bytes(bytes(data))
    actual = hashlib.sha256(bytes(data)).hexdigest()
    for check in (lambda: registry.load(manifest.id), lambda: registry.verify(manifest.id)):
        with pytest.raises(CorruptModelError) as raised:
            check()
        assert manifest.weights_sha256 in str(raised.value)
        assert actual in str(raised.value)


def test_unknown_id_lists_the_available_ones(bundle: Path, registry: ModelRegistry) -> None:
    registry.import_monai_bundle(bundle, model_id="brats-a")
    with pytest.raises(ModelNotFoundError, match=r"'nope'.*available: brats-a"):
        registry.get("nope")
    with pytest.raises(ModelNotFoundError):
        registry.load("../models/brats-a")


def test_an_unmappable_channel_name_is_named(
    tmp_path: Path, registry: ModelRegistry, original: torch.nn.Module
) -> None:
    metadata = copy.deepcopy(METADATA)
    metadata["network_data_format"]["inputs"]["image"]["channel_def"]["2"] = "DWI b1000"
    bundle = write_bundle(tmp_path, original.state_dict(), metadata=metadata)
    with pytest.raises(ChannelNameError, match=r"input channel 2 .*'DWI b1000'"):
        registry.import_monai_bundle(bundle)
    assert registry.ids() == []
    # A site can state the order itself when the metadata is unusable.
    manifest = registry.import_monai_bundle(bundle, input_channels=["t1ce", "t1n", "t2w", "t2f"])
    assert manifest.input_channels == ("t1c", "t1", "t2", "flair")


@pytest.mark.parametrize(
    ("name", "role"),
    [
        ("FLAIR", "flair"), ("t2f", "flair"), ("T2-FLAIR", "flair"), ("T1", "t1"),
        ("T1w", "t1"), ("t1n", "t1"), ("T1 native", "t1"), ("T1 pre-contrast", "t1"),
        ("T1c", "t1c"), ("t1ce", "t1c"), ("T1gd", "t1c"), ("T1-Gd", "t1c"),
        ("T1 contrast", "t1c"), ("T1 post", "t1c"), ("T2", "t2"), ("T2w", "t2"),
    ],
)  # fmt: skip
def test_input_spellings(name: str, role: str) -> None:
    assert input_role(name) == role


@pytest.mark.parametrize(
    ("name", "region"),
    [("Tumor core", "tc"), ("TC", "tc"), ("Whole tumour", "wt"), ("wt", "wt"),
     ("Enhancing tumor", "et"), ("ET", "et"), ("Enhancing Tumor (ET)", "et")],
)  # fmt: skip
def test_output_spellings(name: str, region: str) -> None:
    assert output_region(name) == region


def test_output_channels_that_are_not_nested_regions_are_refused() -> None:
    with pytest.raises(ChannelNameError, match="'background'"):
        output_region("background")


def test_weights_that_do_not_fit_the_network_def_are_refused(
    tmp_path: Path, registry: ModelRegistry, original: torch.nn.Module
) -> None:
    bundle = write_bundle(
        tmp_path, original.state_dict(), network_def={**NETWORK_DEF, "init_filters": 16}
    )
    with pytest.raises(WeightsMismatchError, match=r"init_filters=16.*wrong shape"):
        registry.import_monai_bundle(bundle)
    assert list(registry.root.iterdir()) == []


def test_references_resolve_and_expressions_are_refused(
    tmp_path: Path, registry: ModelRegistry, original: torch.nn.Module
) -> None:
    bundle = write_bundle(tmp_path, original.state_dict())
    config_path = bundle / "configs" / "inference.json"
    config = json.loads(config_path.read_text())
    config["filters"] = 8
    config["network_def"]["init_filters"] = "@filters"
    config_path.write_text(json.dumps(config))
    assert registry.import_monai_bundle(bundle).architecture.init_filters == 8
    config["network_def"]["init_filters"] = "$8 * 1"
    config_path.write_text(json.dumps(config))
    with pytest.raises(BundleImportError, match="does not execute bundle code"):
        registry.import_monai_bundle(bundle, model_id="other")


def test_yaml_config_without_pyyaml_is_a_clear_error(
    tmp_path: Path, registry: ModelRegistry, original: torch.nn.Module
) -> None:
    if importlib.util.find_spec("yaml") is not None:
        pytest.skip("PyYAML is installed here, so YAML configs are read")
    bundle = write_bundle(tmp_path, original.state_dict())
    (bundle / "configs" / "inference.json").rename(bundle / "configs" / "inference.yaml")
    with pytest.raises(BundleImportError, match="YAML and PyYAML is not installed"):
        registry.import_monai_bundle(bundle)


def test_add_folder_copies_a_verified_model_and_never_overwrites(
    bundle: Path, registry: ModelRegistry, tmp_path: Path
) -> None:
    manifest = registry.import_monai_bundle(bundle)
    other = ModelRegistry(tmp_path / "other")
    copied = other.add_folder(registry.root / manifest.id)
    assert copied == manifest
    assert other.verify(manifest.id) == manifest.weights_sha256
    with pytest.raises(ModelExistsError):
        other.add_folder(registry.root / manifest.id)
    renamed = other.add_folder(registry.root / manifest.id, model_id="site-copy")
    assert renamed.id == "site-copy"
    assert other.ids() == ["brats_mri_segmentation-0.4.2", "site-copy"]


def test_cli_import_list_show_verify(bundle: Path, tmp_path: Path) -> None:
    app = typer.Typer()
    app.command()(lambda: None)  # a second command keeps `models` a sub-command
    register(app)
    runner = CliRunner()
    data_dir = ["--data-dir", str(tmp_path / "data")]

    imported = runner.invoke(app, ["models", "import", str(bundle), "--id", "brats", *data_dir])
    assert imported.exit_code == 0, imported.output
    assert "t1c,t1,t2,flair" in imported.output

    listed = runner.invoke(app, ["models", "list", "--json", *data_dir])
    assert listed.exit_code == 0, listed.output
    entries = json.loads(listed.stdout)
    # The imported bundle, listed beside the two built-in models.
    assert [e["id"] for e in entries] == ["brats", "segnode-brats22-v1", "segnode-reference-v1"]
    assert entries[0]["output_channels"] == ["tc", "wt", "et"]

    shown = runner.invoke(app, ["models", "show", "brats", *data_dir])
    assert json.loads(shown.stdout)["source"] == "monai-bundle:brats_mri_segmentation 0.4.2"

    verified = runner.invoke(app, ["models", "verify", "brats", "--load", *data_dir])
    assert verified.exit_code == 0, verified.output
    assert entries[0]["weights_sha256"] in verified.stdout

    weights = tmp_path / "data" / "models" / "brats" / "model.pt"
    data = weights.read_bytes()
    weights.write_bytes(data[:-1] + bytes([data[-1] ^ 0xFF]))
    corrupt = runner.invoke(app, ["models", "verify", "brats", *data_dir])
    assert corrupt.exit_code == 1
    assert entries[0]["weights_sha256"] in corrupt.output

    missing = runner.invoke(app, ["models", "show", "nope", *data_dir])
    assert missing.exit_code == 1
    assert "available: brats" in missing.output
