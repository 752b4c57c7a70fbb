"""`segnode train` through its own Typer app (node/cli/__init__.py wires the same ``register``)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import typer
from typer.testing import CliRunner

from segnode.node.cli import train as train_command
from segnode.pipeline.model.manifest import ModelManifest
from segnode.pipeline.training import trainer as training
from segnode.pipeline.training.config import TrainConfig
from tests.helpers import SHARED_DATA, require_data

TCGA = SHARED_DATA / "nifti" / "TCGA-FG-6692_sri24_skullstripped"
TOOLKIT = SHARED_DATA / "nifti" / "brats-toolkit-preprocessed-case"


def cli() -> typer.Typer:
    app = typer.Typer()

    @app.callback()
    def main() -> None:
        """Keeps ``train`` a sub-command, as in segnode (a lone command becomes the root)."""

    train_command.register(app)
    return app


def _record_training(
    monkeypatch: pytest.MonkeyPatch, first_epoch: int, epochs_completed: int, metrics: dict[str, object]
) -> list[TrainConfig]:
    """Replace the trainer with one that records the TrainConfig the command built (no training)."""
    seen: list[TrainConfig] = []

    def fake_train(config: TrainConfig, progress: object = None) -> training.TrainResult:
        seen.append(config)
        return training.TrainResult(
            model_dir=config.out_dir / "model",
            weights_path=config.out_dir / "model" / "model.pt",
            manifest_path=config.out_dir / "model" / "manifest.json",
            checkpoint_path=config.out_dir / "checkpoint.pt",
            log_path=config.out_dir / "train_log.jsonl",
            first_epoch=first_epoch,
            epochs_completed=epochs_completed,
            metrics=metrics,
        )

    monkeypatch.setattr(training, "train", fake_train)
    return seen


def test_options_map_onto_the_train_config(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    seen = _record_training(monkeypatch, first_epoch=3, epochs_completed=4, metrics={"epochs": 4})
    args = ["train", "--case", str(tmp_path / "a"), "--case", str(tmp_path / "b")]
    args += ["--val-case", str(tmp_path / "v"), "--root", str(tmp_path / "r")]
    args += ["--epochs", "4", "--crop", "128", "128", "96", "--filters", "16", "--seed", "7"]
    args += ["--out", str(tmp_path / "run"), "--resume", "--max-steps", "2", "--fp16-weights"]
    args += ["--device", "cpu", "--model-id", "brats-cpu-16f", "--foreground-crops", "0.5"]
    args += ["--val-every", "5", "--json"]
    result = CliRunner().invoke(cli(), args)
    assert result.exit_code == 0, result.output
    [config] = seen
    assert config.cases == (tmp_path / "a", tmp_path / "b")
    assert config.val_cases == (tmp_path / "v",) and config.data_roots == (tmp_path / "r",)
    assert (config.epochs, config.crop, config.init_filters, config.seed) == (
        4,
        (128, 128, 96),
        16,
        7,
    )
    assert config.resume and config.fp16_weights and config.vae
    assert (config.max_steps_per_epoch, config.device, config.model_id) == (
        2,
        "cpu",
        "brats-cpu-16f",
    )
    assert config.out_dir == tmp_path / "run" and config.foreground_probability == 0.5
    assert config.val_every == 5
    summary = json.loads(result.stdout)
    assert summary["first_epoch"] == 3 and summary["epochs_completed"] == 4


def test_bad_crop_is_an_error_message_not_a_traceback(tmp_path: Path) -> None:
    args = ["train", "--case", str(tmp_path), "--crop", "100", "100", "100", "--out", str(tmp_path)]
    result = CliRunner().invoke(cli(), args)
    assert result.exit_code == 1
    assert "error: crop (100, 100, 100)" in result.output
    assert "multiple of 16" in result.output


def test_a_real_one_step_run(tmp_path: Path) -> None:
    require_data(TCGA)
    args = ["train", "--case", str(TCGA), "--epochs", "1", "--crop", "32", "32", "32"]
    args += ["--filters", "8", "--max-steps", "1", "--device", "cpu", "--out", str(tmp_path)]
    result = CliRunner().invoke(cli(), args)
    assert result.exit_code == 0, result.output
    # The tqdm progress bar: steps done of the total, with the loss and the epoch.
    assert "train: 100%" in result.output and "1/1 [" in result.output
    assert "loss=" in result.output and "epoch=1/1" in result.output
    assert f"model folder: {tmp_path / 'model'} (1 epochs)" in result.output
    assert ModelManifest.read(tmp_path / "model").architecture.vae_input_shape == (32, 32, 32)


def test_init_weights_id_resolves_in_the_registry_of_the_data_dir(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``--init-weights ID`` looks in ``<--data-dir>/models``, not the default config's."""
    from segnode.pipeline.model.registry import ModelRegistry
    from tests.pipeline.model.tiny_model import write_model_folder

    write_model_folder(tmp_path / "source")
    ModelRegistry(tmp_path / "site" / "models").add_folder(tmp_path / "source")
    seen = _record_training(monkeypatch, first_epoch=1, epochs_completed=1, metrics={})
    args = ["train", "--case", str(tmp_path / "a"), "--out-dir", str(tmp_path / "run")]
    args += ["--init-weights", "tiny-random-test", "--data-dir", str(tmp_path / "site")]
    args += ["--init-filters", "16", "--learning-rate", "0.001", "--quiet"]
    result = CliRunner().invoke(cli(), args)
    assert result.exit_code == 0, result.output
    [config] = seen
    assert config.init_weights == tmp_path / "site" / "models" / "tiny-random-test"
    assert (config.init_filters, config.learning_rate) == (16, 0.001)

    missing = CliRunner().invoke(cli(), [*args[:-5], "--data-dir", str(tmp_path / "empty")])
    assert missing.exit_code == 1 and "no model 'tiny-random-test'" in missing.output
