"""The settings model: defaults, the default file, overrides, and clear errors."""

from __future__ import annotations

import tomllib
from pathlib import Path

import pytest
from typer.testing import CliRunner

from segnode.config.destinations import DimseDestination, StowDestination
from segnode.config.errors import ConfigError
from segnode.config.settings import DEFAULT_CONFIG_PATH, Settings, load_settings
from segnode.node.cli import app
from segnode.vocabulary import Role


def test_default_file_equals_model_defaults_except_the_shipped_rules() -> None:
    from_file = load_settings()
    defaults = Settings()
    assert from_file.model_dump(exclude={"routing"}) == defaults.model_dump(exclude={"routing"})
    assert [rule.name for rule in from_file.routing.rules] == ["radiologist-push", "brain-mr"]


def test_every_option_in_the_model_is_documented_in_the_default_file() -> None:
    text = DEFAULT_CONFIG_PATH.read_text()
    for section in (
        "listener", "storage", "selection", "preprocessing", "model", "result_series", "quality",
        "delivery", "jobs", "web", "logging",
    ):
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
        ("[completion.profiles.default]\nrequired_series=['t1', 'dwi']\n",
         "completion.profiles.default.required_series.1: Input should be 't1', 't1c', 't2' or 'flair'"),
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
        "result_series", "quality", "delivery", "jobs", "web", "distributed", "logging",
    }


def test_celery_executor_refuses_sqlite_naming_the_reason(tmp_path: Path) -> None:
    path = tmp_path / "site.toml"
    path.write_text('[jobs]\nexecutor = "celery"\n')
    with pytest.raises(ConfigError, match='jobs.executor = "celery" needs PostgreSQL'):
        load_settings(path)
    path.write_text(
        '[jobs]\nexecutor = "celery"\n[storage]\n'
        'database_url = "postgresql+psycopg://segnode@db.example/segnode"\n'
    )
    assert load_settings(path).jobs.executor == "celery"


def test_destination_without_address_names_the_destination(tmp_path: Path) -> None:
    path = tmp_path / "site.toml"
    path.write_text('[[delivery.destinations]]\nname = "pacs"\nae_title = "PACS"\n')
    with pytest.raises(ConfigError, match="destination 'pacs': dimse needs ae_title, host and port"):
        load_settings(path)


@pytest.mark.parametrize(
    ("toml", "expected"),
    [
        # protocol left out: dimse, which needs ae_title, host and port.
        ('name = "pacs"\nae_title = "PACS"\nport = 104\n',
         "delivery.destinations.0.host: destination 'pacs': dimse needs ae_title, host and port"),
        ('name = "pacs"\nprotocol = "dimse"\nhost = "pacs"\nport = 104\n',
         "delivery.destinations.0.ae_title: destination 'pacs': dimse needs"),
        ('name = "web"\nprotocol = "stow-rs"\n',
         "delivery.destinations.0.url: destination 'web': stow-rs needs url (url is missing)"),
        # Each protocol takes only its own keys.
        ('name = "web"\nprotocol = "stow-rs"\nurl = "http://pacs/dicom-web/studies"\nae_title = "PACS"\n',
         "delivery.destinations.0.ae_title: not an option of a stow-rs destination"),
        ('name = "x"\nprotocol = "ftp"\n', "does not match any of the expected tags: 'dimse', 'stow-rs'"),
        ('name = "pacs"\nae_title = "PACS"\nhost = "pacs"\nport = 104\nsend = []\n',
         "destination 'pacs': send lists nothing"),
    ],
)
def test_destination_errors_name_the_key(tmp_path: Path, toml: str, expected: str) -> None:
    path = tmp_path / "site.toml"
    path.write_text(f"[[delivery.destinations]]\n{toml}")
    with pytest.raises(ConfigError) as caught:
        load_settings(path)
    assert expected in str(caught.value)


def test_destinations_are_typed_by_protocol_and_call_as_the_listener(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "site.toml"
    path.write_text(
        '[listener]\nae_title = "SITE_NODE"\n'
        '[[delivery.destinations]]\nname = "pacs"\nae_title = "PACS"\nhost = "pacs"\nport = 104\n'
        '[[delivery.destinations]]\nname = "own"\nae_title = "PACS"\nhost = "pacs"\nport = 104\n'
        'calling_ae = "OWN_TITLE"\n'
        '[[delivery.destinations]]\nname = "web"\nprotocol = "stow-rs"\nurl = "http://pacs/dicom-web/studies"\n'
    )
    pacs, own, web = load_settings(path).delivery.destinations
    assert isinstance(pacs, DimseDestination) and pacs.calling_ae == "SITE_NODE"
    assert isinstance(own, DimseDestination) and own.calling_ae == "OWN_TITLE"
    assert isinstance(web, StowDestination) and web.url.endswith("/studies")
    # The calling AE follows the effective listener title, wherever it was set.
    monkeypatch.setenv("SEGNODE__LISTENER__AE_TITLE", "FROM_ENV")
    pacs = load_settings(path).delivery.destinations[0]
    assert isinstance(pacs, DimseDestination) and pacs.calling_ae == "FROM_ENV"
    overridden = load_settings(path, overrides={"listener": {"ae_title": "FROM_CLI"}})
    assert overridden.delivery.destinations[0].model_dump()["calling_ae"] == "FROM_CLI"


@pytest.mark.parametrize(
    ("toml", "expected"),
    [
        ("[outputs]\nseg_series_number = 42\n", "outputs: this section is now [result_series]"),
        ("[completion.role_patterns]\nt1c = 'post'\n",
         "completion.role_patterns: removed: required_series is checked with sequence "
         "identification, whose description patterns are [selection.role_patterns]"),
        ("[result_series]\nsr_region_reference = 'segment'\n",
         "result_series.sr_region_reference: removed: the SR now always references the SEG"),
    ],
)
def test_a_replaced_option_says_what_replaced_it(tmp_path: Path, toml: str, expected: str) -> None:
    path = tmp_path / "site.toml"
    path.write_text(toml)
    with pytest.raises(ConfigError) as caught:
        load_settings(path)
    assert expected in str(caught.value)
    assert "unknown option" not in str(caught.value)


def test_result_series_is_read_from_its_section(tmp_path: Path) -> None:
    path = tmp_path / "site.toml"
    path.write_text("[result_series]\nseg_series_number = 42\n")
    settings = load_settings(path)
    assert settings.result_series.seg_series_number == 42
    assert settings.result_series.sr_series_number == 9902  # from the shipped defaults


def test_site_file_is_layered_over_the_defaults(tmp_path: Path) -> None:
    path = tmp_path / "site.toml"
    path.write_text("[listener]\nport = 4242\n[completion.profiles.default]\nseries_quiet_s = 5.0\n")
    settings = load_settings(path)
    assert settings.listener.port == 4242
    assert settings.listener.ae_title == "SEGNODE"  # from the shipped defaults
    assert settings.completion.profiles["default"].series_quiet_s == 5.0
    assert settings.completion.profiles["default"].study_quiet_s == 60.0
    assert [rule.name for rule in settings.routing.rules] == ["radiologist-push", "brain-mr"]


@pytest.mark.parametrize("device", ["auto", "cpu", "cuda", "cuda:1"])
def test_model_device_accepts_the_device_policys_names(device: str) -> None:
    assert load_settings(overrides={"model": {"device": device}}).model.device == device


@pytest.mark.parametrize("device", ["gpu", "cuda:", "cuda:x", "mps"])
def test_model_device_refuses_other_names_naming_the_key(device: str) -> None:
    with pytest.raises(ConfigError, match=r"model\.device"):
        load_settings(overrides={"model": {"device": device}})


def test_the_t1c_has_no_stand_in_and_a_role_not_itself(tmp_path: Path) -> None:
    path = tmp_path / "site.toml"
    path.write_text('[selection]\nsubstitutes = [{ missing = "t1c", stand_in = "t1" }]\n')
    with pytest.raises(ConfigError, match="the T1c cannot be substituted"):
        load_settings(path)
    path.write_text('[selection]\nsubstitutes = [{ missing = "t2", stand_in = "t2" }]\n')
    with pytest.raises(ConfigError, match="t2 cannot stand in for itself"):
        load_settings(path)
    path.write_text('[selection]\nsubstitutes = [{ missing = "t1", stand_in = "t1c" }]\n')
    assert load_settings(path).selection.stand_in_for == {Role.T1: Role.T1C}  # replaces the defaults
    path.write_text("[selection]\nsubstitutes = []\n")
    assert load_settings(path).selection.stand_in_for == {}


def test_quality_limits_are_checked(tmp_path: Path) -> None:
    path = tmp_path / "site.toml"
    path.write_text("[quality]\nmin_brain_ml = 2500\n")
    with pytest.raises(ConfigError, match="min_brain_ml must be below max_brain_ml"):
        load_settings(path)
    path.write_text("[quality]\nmax_motion_mm = 0\n")
    with pytest.raises(ConfigError, match="quality.max_motion_mm"):
        load_settings(path)


def test_a_destination_cannot_receive_the_sr_without_the_seg_it_refers_to(tmp_path: Path) -> None:
    path = tmp_path / "site.toml"
    path.write_text(
        '[[delivery.destinations]]\nname = "ris"\nae_title = "RIS"\nhost = "127.0.0.1"\nport = 104\n'
        'send = ["sr"]\n'
    )
    with pytest.raises(ConfigError, match="destination 'ris': the SR refers to the SEG"):
        load_settings(path)
    path.write_text(path.read_text().replace('send = ["sr"]', 'send = ["sr", "seg"]'))
    assert load_settings(path).delivery.destinations[0].send == ["sr", "seg"]
