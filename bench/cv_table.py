"""Markdown tables for docs/models.md from ``segnode cv`` reports (``cv_report.json``).

Prints, per run folder given: one row of mean ± sd Dice and HD95 per region, the chosen
post-processing and the seconds of training; then the label confusion matrix of each run and
the per-case Dice of the last run. Numbers are copied from the reports, never re-computed here.

    .venv/bin/python -m bench.cv_table /work/cv/segresnet-fg48 /work/cv/unet-bce-dice ...
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any


def _train_minutes(run: Path) -> float:
    """Training time of every fold model, from the folds' own logs (a resumed ``segnode cv``
    reports 0 s for folds it did not train again)."""
    seconds = 0.0
    for log in sorted(run.glob("fold*/train_log.jsonl")):
        seconds += sum(json.loads(line)["seconds"] for line in log.read_text().splitlines())
    return seconds / 60


def _row(report: dict[str, Any], minutes: float) -> str:
    summary = report["summary"]
    dice = " | ".join(
        f"{summary[r]['dice_mean']:.3f} ± {summary[r]['dice_sd']:.3f}" for r in ("wt", "tc", "et")
    )
    hd95 = " | ".join(
        f"{summary[r]['hd95_mean']:.1f} ± {summary[r]['hd95_sd']:.1f}" for r in ("wt", "tc", "et")
    )
    post = report["postprocessing"]
    cut = f"{post['threshold']}/{post.get('et_threshold', post['threshold'])}"
    rules = f"{cut}, ET<{post['et_min_voxels']}, cc<{post['min_component_voxels']}"
    return f"| {report['recipe']} | {report['steps']} | {dice} | {hd95} | {rules} | {minutes:.0f} |"


def _confusion(report: dict[str, Any]) -> list[str]:
    labels = report["confusion"]["labels"]
    matrix = report["confusion"]["rows_expert_cols_predicted"]
    lines = [
        f"Label confusion, {report['recipe']} (voxels; rows expert, columns predicted; "
        "each row as % of the expert label):",
        "",
        "| expert \\ predicted | " + " | ".join(labels) + " |",
        "|---|" + "---:|" * len(labels),
    ]
    for name, row in zip(labels, matrix, strict=True):
        total = sum(row) or 1
        cells = " | ".join(f"{value:,} ({100 * value / total:.0f} %)" for value in row)
        lines.append(f"| {name} | {cells} |")
    return lines


def main() -> None:
    runs = [Path(arg) for arg in sys.argv[1:]]
    reports = [json.loads((run / "cv_report.json").read_text()) for run in runs]
    print(
        "| recipe | steps/fold | WT Dice | TC Dice | ET Dice | WT HD95 | TC HD95 | ET HD95 "
        "| post-processing (thr WT,TC/ET, rules) | train min |"
    )
    print("|---|---:|---|---|---|---|---|---|---|---:|")
    for run, report in zip(runs, reports, strict=True):
        print(_row(report, _train_minutes(run)))
    for report in reports:
        print()
        print("\n".join(_confusion(report)))
    last = reports[-1]
    print()
    print(f"Per case, {last['recipe']} (fold: WT / TC / ET Dice):")
    print()
    print("| case | fold | WT | TC | ET |")
    print("|---|---:|---:|---:|---:|")
    fold_of = {case: fold for fold, cases in last["folds"].items() for case in cases}
    for case, scores in sorted(last["by_case"].items(), key=lambda item: fold_of[item[0]]):
        dice = " | ".join(f"{scores[r]['dice']:.3f}" for r in ("wt", "tc", "et"))
        print(f"| {case} | {fold_of[case]} | {dice} |")


if __name__ == "__main__":
    main()
