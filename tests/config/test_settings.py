"""The settings model: defaults, the default file, overrides, and clear errors."""

from __future__ import annotations

import tomllib
from pathlib import Path

import pytest
from typer.testing import CliRunner

from segnode.config.errors import ConfigError
from segnode.config.settings import DEFAULT_CONFIG_PATH, Settings, load_settings
from segnode.node.cli import app


def test_default_file_equals_model_defaults_except_the_shipped_rules() -> None:
    from_file = load_settings()
    defaults = Settings()
    assert from_file.model_dump(exclude={"routing"}) == defaults.model_dump(exclude={"routing"})
    assert [rule.name for rule in from_file.routing.rules] == ["radiologist-push", "brain-mr"]


def test_every_option_in_the_model_is_documented_in_the_default_file() -> None:
    text = DEFAULT_CONFIG_PATH.read_text()
    for section in ("listener", "storage", "selection", "preprocessing", "model", "logging"):
        model = getattr(Settings(), section)
        for key in type(model).model_fields:
            documented = f"\n{key} = " in text or f"[{section}.{key}]" in text
            # An option unset by default (None, which TOML cannot write) is a commented example.
            documented |= getattr(model, key) is None and f"\n# {key} = " in text
            assert documented, f"{section}.{key} missing from node.toml"
    for key in type(Settings().completion).model_fields:
        assert key in text


def test_environment_overrides_file_and_cli_overrides_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SEGNODE__LISTENER__PORT", "4104")
    monkeypatch.setenv("SEGNODE__STORAGE__DUPLICATES", "keep_newest")
    settings = load_settings()
    assert settings.listener.port == 4104
    assert settings.storage.duplicates.value == "keep_newest"
    assert load_settings(overrides={"listener": {"port": 5104}}).listener.port == 5104


@pytest.mark.parametrize(
    ("toml", "expected"),
    [
        ("[listener]\nport = 70000\n", "listener.port: Input should be less than or equal to 65535"),
        ("[listener]\nae_titel = 'X'\n", "listener.ae_titel: unknown option"),
        ("[listener]\nae_title = 'WAY_TOO_LONG_AE_TITLE'\n", "listener.ae_title"),
        ("[storage]\nduplicates = 'keep_all'\n", "storage.duplicates"),
        ("[[routing.rules]]\nname='x'\nall_of=[{tag='Modality', matches='('}]\n", "invalid regular expression"),
        ("[[routing.rules]]\nname='x'\nall_of=[{tag='NotAKeyword', equals='MR'}]\n", "'NotAKeyword' is not a DICOM keyword"),
        ("[[routing.rules]]\nname='x'\nall_of=[{tag='Modality', equals='MR', present=true}]\n", "exactly one of"),
        ("[[routing.rules]]\nname='x'\ncompletion='nope'\n", "completion profile 'nope' is not defined"),
        ("[completion.profiles.default]\nrequired_series=['t1', 'dwi']\n", "['dwi'], which are not in role_patterns"),
        ("[listener\nport = 1\n", "not valid TOML"),
    ],
)
def test_invalid_configuration_names_the_key(tmp_path: Path, toml: str, expected: str) -> None:
    path = tmp_path / "site.toml"
    path.write_text(toml)
    with pytest.raises(ConfigError) as caught:
        load_settings(path)
    assert expected in str(caught.value)
    assert str(path) in str(caught.value)


def test_check_config_cli_exits_2_with_the_key_named(tmp_path: Path) -> None:
    path = tmp_path / "site.toml"
    path.write_text("[listener]\nport = 0\n")
    result = CliRunner().invoke(app, ["check-config", "--config", str(path)])
    assert result.exit_code == 2
    assert "listener.port" in result.output


def test_check_config_cli_prints_the_effective_configuration() -> None:
    result = CliRunner().invoke(app, ["check-config"])
    assert result.exit_code == 0
    assert '"ae_title": "SEGNODE"' in result.output


def test_default_file_is_valid_toml_with_documented_sections() -> None:
    data = tomllib.loads(DEFAULT_CONFIG_PATH.read_text())
    assert set(data) == {
        "listener", "storage", "completion", "routing", "selection", "preprocessing", "model",
        "outputs", "delivery", "jobs", "logging",
    }


def test_destination_without_address_names_the_destination(tmp_path: Path) -> None:
    path = tmp_path / "site.toml"
    path.write_text('[[delivery.destinations]]\nname = "pacs"\nae_title = "PACS"\n')
    with pytest.raises(ConfigError, match="destination 'pacs': dimse needs ae_title, host and port"):
        load_settings(path)


def test_site_file_is_layered_over_the_defaults(tmp_path: Path) -> None:
    path = tmp_path / "site.toml"
    path.write_text("[listener]\nport = 4242\n[completion.profiles.default]\nseries_quiet_s = 5.0\n")
    settings = load_settings(path)
    assert settings.listener.port == 4242
    assert settings.listener.ae_title == "SEGNODE"  # from the shipped defaults
    assert settings.completion.profiles["default"].series_quiet_s == 5.0
    assert settings.completion.profiles["default"].study_quiet_s == 60.0
    assert [rule.name for rule in settings.routing.rules] == ["radiologist-push", "brain-mr"]
