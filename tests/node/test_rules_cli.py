"""`segnode rules test` on real scanner folders: which rule matches, and why."""

from __future__ import annotations

import json
from pathlib import Path

from typer.testing import CliRunner

from segnode.node.cli import app
from tests.helpers import require_shared_data


def run(*args: str) -> dict:  # type: ignore[type-arg]
    result = CliRunner().invoke(app, ["rules", "test", *args, "--json"])
    assert result.exit_code == 0, result.output
    return json.loads(result.output)


def test_brain_mr_rule_matches_on_body_part() -> None:
    folder = require_shared_data() / "siemens_prisma_E11_t1_fl2d_sag_HFS"
    [study] = run(str(folder))["studies"]
    assert study["action"] == "process" and study["rule"] == "brain-mr"
    reasons = [e for e in study["evaluations"] if e["rule"] == "brain-mr"][0]["reasons"]
    assert "all_of: Modality equals 'MR': yes (Modality='MR')" in reasons
    assert any("BodyPartExamined" in reason and ": yes" in reason for reason in reasons)


def test_research_study_without_body_part_is_ignored_unless_pushed() -> None:
    folder = require_shared_data() / "siemens_trio_transfer_syntaxes"
    [study] = run(str(folder))["studies"]
    assert study["action"] == "ignore" and study["rule"] is None
    assert "no rule matched" in study["explanation"]
    [pushed] = run(str(folder), "--called-ae", "SEGNODE_PUSH")["studies"]
    assert pushed["action"] == "process" and pushed["rule"] == "radiologist-push"


def test_site_rules_and_text_output(tmp_path: Path) -> None:
    config = tmp_path / "site.toml"
    config.write_text(
        "[[routing.rules]]\nname = 'no-epi'\naction = 'ignore'\n"
        "all_of = [{ tag = 'SeriesDescription', matches = 'epi|fmri' }]\n"
        "[[routing.rules]]\nname = 'all-mr'\nall_of = [{ tag = 'Modality', equals = 'MR' }]\n"
    )
    data = require_shared_data()
    [epi] = run(str(data / "ge_mr750_3T_axial_EPI_human"), "--config", str(config))["studies"]
    assert epi["rule"] == "no-epi" and epi["action"] == "ignore"
    text = CliRunner().invoke(app, ["rules", "test", str(data / "toshiba_galan_DTI_one_slice"), "--config", str(config)])
    assert text.exit_code == 0
    assert "PROCESS" in text.output and "rule 'all-mr': MATCH" in text.output
