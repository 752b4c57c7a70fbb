"""``segnode predict`` and ``segnode evaluate`` end to end, through typer's CliRunner.

The commands are registered on a fresh typer app here (node/cli/__init__.py wires them into segnode).
Prediction runs a tiny RANDOM model on the REAL TCGA-FG-6692 case: the labels are meaningless,
but the grid, the label values and the checksum gate are what is under test.
"""

from __future__ import annotations

import json
from pathlib import Path

import nibabel as nib
import numpy as np
import typer
from typer.testing import CliRunner

from segnode.node.cli import evaluate, predict
from tests.helpers import SHARED_DATA, require_data
from tests.pipeline.model.tiny_model import write_model_folder

TCGA = SHARED_DATA / "nifti" / "TCGA-FG-6692_sri24_skullstripped"


def _app() -> typer.Typer:
    app = typer.Typer()

    @app.callback()
    def main() -> None:
        """Subcommands as in segnode."""

    predict.register(app)
    evaluate.register(app)
    return app


def _nifti(path: Path) -> nib.Nifti1Image:
    image = nib.load(path)
    assert isinstance(image, nib.Nifti1Image)
    return image


def _require_tcga() -> Path:
    return require_data(TCGA)


def test_predict_writes_labels_on_the_input_grid(tmp_path: Path) -> None:
    case = _require_tcga()
    write_model_folder(tmp_path / "model")
    out = tmp_path / "out" / "labels.nii.gz"

    result = CliRunner().invoke(
        _app(),
        ["predict", str(case), "--out", str(out), "--model", str(tmp_path / "model"), "--no-tta"],
    )

    assert result.exit_code == 0, result.output
    assert "full volume" in result.output and "TTA off" in result.output
    reference = _nifti(case / "t1.nii.gz")
    written = _nifti(out)
    assert written.shape == reference.shape == (240, 240, 155)
    np.testing.assert_array_equal(written.affine, reference.affine)
    assert int(written.header["sform_code"]) == int(reference.header["sform_code"])
    assert int(written.header["qform_code"]) == int(reference.header["qform_code"])
    labels = np.asarray(written.dataobj)
    assert labels.dtype == np.uint8
    assert set(np.unique(labels).tolist()) <= {0, 1, 2, 4}
    assert not list(out.parent.glob(".partial-*"))


def _synthetic_case(folder: Path) -> None:
    """A small SYNTHETIC case with BraTS 2023 file names (-t1n/-t1c/-t2w/-t2f)."""
    rng = np.random.default_rng(0)
    folder.mkdir(parents=True)
    affine = np.diag([-1.0, -1.0, 1.0, 1.0])
    for suffix in ("t1n", "t1c", "t2w", "t2f"):
        voxels = np.zeros((20, 19, 12), dtype=np.float32)
        voxels[3:17, 3:16, 2:10] = rng.uniform(100, 1000, size=(14, 13, 8))
        nib.save(nib.Nifti1Image(voxels, affine), folder / f"BraTS-GLI-99999-000-{suffix}.nii.gz")


def test_predict_2023_labels_with_a_window_on_2023_names(tmp_path: Path) -> None:
    _synthetic_case(tmp_path / "case")
    write_model_folder(tmp_path / "model", output_channels=("tc", "wt", "et"))
    out = tmp_path / "labels.nii.gz"
    arguments = [
        "predict",
        str(tmp_path / "case"),
        "--out",
        str(out),
        "--model",
        str(tmp_path / "model"),
    ]
    options = [
        "--labels",
        "2023",
        "--roi",
        "16",
        "16",
        "16",
        "--et-min-voxels",
        "0",
        "--min-component-voxels",
        "0",
    ]

    result = CliRunner().invoke(_app(), arguments + options)

    assert result.exit_code == 0, result.output
    assert "sliding window 16x16x16" in result.output and "TTA on" in result.output
    written = _nifti(out)
    assert written.shape == (20, 19, 12)
    assert set(np.unique(np.asarray(written.dataobj)).tolist()) <= {0, 1, 2, 3}


def test_predict_reads_model_settings_from_the_config_and_takes_a_device(tmp_path: Path) -> None:
    """``[model]`` of ``--config`` decides TTA and post-processing, an option overrides it."""
    _synthetic_case(tmp_path / "case")
    write_model_folder(tmp_path / "model")
    config = tmp_path / "site.toml"
    config.write_text("[model]\ntta = false\net_min_voxels = 0\nmin_component_voxels = 7\n")
    arguments = ["predict", str(tmp_path / "case"), "--model", str(tmp_path / "model")]
    arguments += ["--config", str(config), "--device", "cpu"]

    result = CliRunner().invoke(_app(), [*arguments, "--out", str(tmp_path / "a.nii.gz")])
    assert result.exit_code == 0, result.output
    assert "TTA off" in result.output and ", cpu (openvino " in result.output
    assert "smaller than 7 voxels" in result.output

    again = CliRunner().invoke(
        _app(), [*arguments, "--tta", "--min-component-voxels", "0", "--out", str(tmp_path / "b.nii.gz")]
    )
    assert again.exit_code == 0, again.output
    assert "TTA on" in again.output and "smaller than" not in again.output

    bad = CliRunner().invoke(
        _app(), [*arguments, "--device", "tpu", "--out", str(tmp_path / "c.nii.gz")]
    )
    assert bad.exit_code == 1 and "error:" in bad.output and "model.device" in bad.output


def test_predict_refuses_corrupt_weights(tmp_path: Path) -> None:
    _synthetic_case(tmp_path / "case")
    manifest = write_model_folder(tmp_path / "model")
    weights = tmp_path / "model" / manifest.weights_file
    data = bytearray(weights.read_bytes())
    data[-100] ^= 0x01
    weights.write_bytes(bytes(data))
    out = tmp_path / "labels.nii.gz"

    result = CliRunner().invoke(
        _app(),
        ["predict", str(tmp_path / "case"), "--out", str(out), "--model", str(tmp_path / "model")],
    )

    assert result.exit_code == 1
    assert "checksum mismatch" in result.output
    assert not out.exists()


def test_predict_with_an_unknown_model_id_lists_the_known_ones(tmp_path: Path) -> None:
    _synthetic_case(tmp_path / "case")
    result = CliRunner().invoke(
        _app(),
        ["predict", str(tmp_path / "case"), "--out", str(tmp_path / "x.nii.gz"),
         "--model", "no-such-model", "--data-dir", str(tmp_path / "data")],
    )
    assert result.exit_code == 1
    assert "no model 'no-such-model'" in result.output and "available" in result.output


def test_evaluate_prints_a_table_and_json() -> None:
    case = _require_tcga()
    arguments = [
        "evaluate",
        str(case / "algo_segs" / "isen-20.nii.gz"),
        str(case / "seg_fusion_mav_5algos.nii.gz"),
    ]

    table = CliRunner().invoke(_app(), arguments)
    assert table.exit_code == 0, table.output
    assert "WT Dice" in table.output and "mean" in table.output

    as_json = CliRunner().invoke(_app(), [*arguments, "--json"])
    assert as_json.exit_code == 0, as_json.output
    report = json.loads(as_json.output)
    assert report["mean"]["wt"]["dice"] > 0.7
    assert report["cases"]["isen-20"]["et"]["hd95"] < 50


def test_evaluate_reports_errors_without_a_traceback(tmp_path: Path) -> None:
    result = CliRunner().invoke(_app(), ["evaluate", str(tmp_path / "a.nii.gz"), str(tmp_path)])
    assert result.exit_code == 1
    assert "error:" in result.output and "does not exist" in result.output
