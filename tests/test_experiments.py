"""``pixelwise experiment`` (the ``pixelwise-experiments`` add-on in ``experiments/``): a tiny synthetic study end
to end through the study runner, resuming, the verdicts, the command line, and (when the real data sets are
present) the plans of the registered studies."""

from __future__ import annotations

import csv
import os
import statistics
from pathlib import Path

import pytest
import yaml
from PIL import Image

from pixelwise.cli import main
from pixelwise.data.synthetic import write_synthetic
from pixelwise.errors import ConfigError
from pixelwise_experiments import STUDIES, StudyOptions, data_folder, get_study, plan, run_study
from pixelwise_experiments.base import LargerGain, Metric, Ordered, Stat, Study, Variant

REPO = Path(__file__).resolve().parents[1]
DATA = Path(os.environ.get("PIXELWISE_DATA", REPO.parent / "shared" / "data"))
MIOU = Metric("miou", "mIoU")
TINY_UNET = {"decoder_channels": [16, 8, 8], "encoder_depth": 3}
TINY = Study(
    name="tiny",
    claim="bilinear beats nearest",
    source="this test",
    dataset="cells",
    layout=("train/images", "train/masks", "val/images", "val/masks"),
    base={"classes": 2, "model": "unet", "encoder": "resnet18", "crop": 32, "batch_size": 2, "lr": 3e-3},
    variants=(
        Variant("nearest", {"model_options": TINY_UNET | {"decoder_upsampling": "nearest"}}),
        Variant("bilinear", {"model_options": TINY_UNET | {"decoder_upsampling": "bilinear"}}, "U-Net bilinear"),
    ),
    steps=2,
    epochs=1,
    metrics=(MIOU, Metric("boundary_f1", "boundary F1")),
    claims=(Ordered("bilinear > nearest in mIoU", MIOU, ("bilinear", "nearest")),),
    class_names=("background", "cell"),
    extra_columns=(Metric("params", "parameters", higher_is_better=False, digits=0),),
)
SEEDS = 2


@pytest.fixture(scope="module")
def finished(tmp_path_factory) -> tuple[StudyOptions, list[str]]:
    root = tmp_path_factory.mktemp("study")
    data = write_synthetic(root / "cells", "cells", n_train=4, n_val=2, size=48, seed=0)
    options = StudyOptions(data=data, out=root / "out", runs_dir=root / "runs", seeds=SEEDS, accelerator="cpu")
    lines: list[str] = []
    run_study(TINY, options, log=lines.append)
    return options, lines


def _csv(path: Path) -> list[dict]:
    with path.open(newline="") as handle:
        return list(csv.DictReader(handle))


def test_study_writes_one_row_per_run_and_small_artefacts(finished):
    options, lines = finished
    rows = _csv(options.out / "results.csv")
    assert len(rows) == len(TINY.variants) * SEEDS
    assert sorted((r["variant"], r["seed"]) for r in rows) == sorted(
        (v.name, str(s)) for v in TINY.variants for s in range(SEEDS)
    )
    for row in rows:
        assert int(row["steps"]) == int(row["planned_steps"]) == 2 and row["capped"] == "False"
        assert 0 <= float(row["miou"]) <= 1 and 0 <= float(row["boundary_f1"]) <= 1
        assert abs(float(row["pixel_error"]) + float(row["pixel_accuracy"]) - 1) < 1e-9
        assert int(row["params"]) > 0 and float(row["ms_per_image"]) > 0 and row["images"] == "2"
        config = yaml.safe_load((options.out / "configs" / f"{row['variant']}-seed{row['seed']}.yaml").read_text())
        assert config["seed"] == int(row["seed"]) and config["model_options"]["decoder_upsampling"] == row["variant"]
    for name in ("bars.png", "samples.png", "predictions/nearest.png", "predictions/bilinear.png"):
        path = options.out / name
        assert path.stat().st_size < 100_000, name
        Image.open(path).verify()
    assert not list(options.runs_dir.rglob("*.ckpt")), "checkpoints are deleted once a run is scored"
    finished_lines = [line for line in lines if "steps in" in line]
    assert len(finished_lines) == len(rows) and all("mIoU" in line for line in finished_lines)


def test_results_md_means_and_verdict_match_the_csv(finished):
    options, _ = finished
    rows = _csv(options.out / "results.csv")
    text = (options.out / "results.md").read_text()
    stats = {}
    for variant in TINY.variants:
        for metric in (*TINY.metrics, *TINY.extra_columns):
            values = [float(r[metric.key]) for r in rows if r["variant"] == variant.name]
            mean, std = statistics.fmean(values), statistics.stdev(values)
            stats[variant.name, metric.key] = (mean, std)
            assert f"{mean:.{metric.digits}f} ± {std:.{metric.digits}f}" in text, (variant.name, metric.key)
    (good, good_sd), (bad, bad_sd) = stats["bilinear", "miou"], stats["nearest", "miou"]
    expected = (
        "holds" if good - bad > good_sd + bad_sd else "holds within the seed spread" if good > bad else "does not hold"
    )
    assert f"bilinear > nearest in mIoU: **{expected}**" in text
    assert "U-Net bilinear" in text and "![bars](bars.png)" in text and "![samples](samples.png)" in text
    assert "no wall-clock cap" in text


def test_an_interrupted_study_resumes_with_the_missing_runs_only(finished):
    options, _ = finished
    path = options.out / "results.csv"
    rows = _csv(path)
    with path.open("w", newline="") as handle:  # forget the last run, as if it had been interrupted
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows[:-1])
    lines: list[str] = []
    run_study(TINY, options, log=lines.append)
    assert sum("skipped" in line for line in lines) == len(rows) - 1
    assert sum("steps in" in line for line in lines) == 1
    again = _csv(path)
    assert [(r["variant"], r["seed"]) for r in again] == [(r["variant"], r["seed"]) for r in rows]
    assert [r["miou"] for r in again[:-1]] == [r["miou"] for r in rows[:-1]]
    with pytest.raises(ConfigError, match=r"--budget 1\.0, not 2\.0"):
        run_study(TINY, StudyOptions(**{**vars(options), "budget": 2.0}), log=lines.append)


def test_plan_gives_every_run_equal_steps_and_no_time_cap_unless_asked(tmp_path):
    options = StudyOptions(data=tmp_path, out=tmp_path, runs_dir=tmp_path, budget=3.0, seeds=2)
    runs = plan(TINY, options)
    assert [r.name for r in runs] == ["nearest-seed0", "nearest-seed1", "bilinear-seed0", "bilinear-seed1"]
    assert {r.planned_steps for r in runs} == {6}
    assert {r.config.samples_per_epoch for r in runs} == {6 * 2}  # one epoch of 6 steps of batch 2
    assert {r.config.max_minutes for r in runs} == {None}  # the budget is steps: no clock, whatever the machine
    capped = plan(TINY, StudyOptions(**{**vars(options), "max_minutes_per_run": 1.5}))
    assert {r.config.max_minutes for r in capped} == {1.5} and {r.planned_steps for r in capped} == {6}
    with pytest.raises(ConfigError, match="budget=0"):
        plan(TINY, StudyOptions(data=tmp_path, out=tmp_path, runs_dir=tmp_path, budget=0))
    with pytest.raises(ConfigError, match="max_minutes_per_run=0"):
        plan(TINY, StudyOptions(**{**vars(options), "max_minutes_per_run": 0}))


def test_the_data_folder_comes_from_data_or_the_environment_only(tmp_path, monkeypatch):
    data = write_synthetic(tmp_path / "cells", "cells", n_train=1, n_val=1, size=16, seed=0)
    monkeypatch.delenv("PIXELWISE_DATA", raising=False)
    with pytest.raises(ConfigError, match="--data") as error:
        data_folder(TINY)
    assert "PIXELWISE_DATA" in str(error.value)
    assert data_folder(TINY, tmp_path) == data_folder(TINY, data) == data  # the folder or its parent
    monkeypatch.setenv("PIXELWISE_DATA", str(tmp_path))
    assert data_folder(TINY) == data


@pytest.mark.parametrize(
    ("a", "b", "status"),
    [
        (Stat(0.8, 0.05, 3), Stat(0.6, 0.05, 3), "holds"),
        (Stat(0.8, 0.15, 3), Stat(0.6, 0.1, 3), "holds within the seed spread"),
        (Stat(0.5, 0.01, 3), Stat(0.6, 0.01, 3), "does not hold"),
    ],
)
def test_ordered_verdicts(a, b, status):
    claim = Ordered("a > b", MIOU, ("a", "b"))
    verdict = claim.verdict({"a": {"miou": a}, "b": {"miou": b}}, {"a": "A", "b": "B"})
    assert verdict.status == status
    lower = Ordered("a < b", Metric("err", "error", higher_is_better=False), ("b", "a"))
    flipped = lower.verdict({"a": {"err": a}, "b": {"err": b}}, {"a": "A", "b": "B"})
    assert flipped.status == status
    # the detail reads the way the claim does: "A > B" for higher-is-better, "B < A" for lower-is-better
    ordered = status != "does not hold"
    assert ("A" + f" {a.text()} {'>' if ordered else '≤'} B") in verdict.detail
    assert ("B" + f" {b.text()} {'<' if ordered else '≥'} A") in flipped.detail


def test_larger_gain_verdict():
    stats = {
        "s5": Stat(0.70, 0.01, 3),
        "n5": Stat(0.50, 0.01, 3),
        "s20": Stat(0.80, 0.01, 3),
        "n20": Stat(0.75, 0.01, 3),
    }
    summary = {k: {"miou": v} for k, v in stats.items()}
    titles = {k: k for k in stats}
    assert LargerGain("g", MIOU, ("s5", "n5"), ("s20", "n20")).verdict(summary, titles).status == "holds"
    assert LargerGain("g", MIOU, ("s20", "n20"), ("s5", "n5")).verdict(summary, titles).status == "does not hold"
    losses = {"s5": 0.70, "n5": 0.72, "s20": 0.60, "n20": 0.70}  # augmentation hurts, less so with 5
    losses = {k: {"miou": Stat(v, 0.01, 3)} for k, v in losses.items()}
    verdict = LargerGain("g", MIOU, ("s5", "n5"), ("s20", "n20")).verdict(losses, titles)
    assert verdict.status == "does not hold" and "does not beat" in verdict.detail  # hurting less is not helping more


def test_cli_lists_the_studies_and_their_claims(capsys):
    assert main(["experiment", "--list"]) == 0
    listing = capsys.readouterr().out
    for name in ("fcn-skips", "upsampling", "unet-vs-fcn", "augmentation"):
        assert name in listing
    assert "FCN-8s beats FCN-16s beats FCN-32s" in listing and "Elastic deformation" in listing
    with pytest.raises(SystemExit):
        main(["experiment", "--help"])
    assert "unet-vs-fcn" in capsys.readouterr().out


def test_cli_errors_name_the_fix(tmp_path, monkeypatch, capsys):
    assert main(["experiment", "unet-vs-fcm"]) == 2
    assert "did you mean 'unet-vs-fcn'" in capsys.readouterr().err
    assert main(["experiment", "fcn-skips", "--data", str(tmp_path / "nowhere")]) == 2
    error = capsys.readouterr().err
    assert "PIXELWISE_DATA" in error and "--data" in error and "val/masks" in error
    monkeypatch.delenv("PIXELWISE_DATA", raising=False)
    assert main(["experiment", "fcn-skips", "--dry-run"]) == 2  # no default data location
    error = capsys.readouterr().err
    assert "PIXELWISE_DATA" in error and "--data" in error and "shared" not in error


def test_cli_time_cap_is_opt_in(tmp_path, monkeypatch, capsys):
    study = get_study("fcn-skips")
    for sub in study.layout:
        (tmp_path / study.dataset / sub).mkdir(parents=True)
    monkeypatch.setenv("PIXELWISE_DATA", str(tmp_path))
    assert main(["experiment", "fcn-skips", "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert str(tmp_path / study.dataset) in out and "min each" not in out
    assert main(["experiment", "fcn-skips", "--dry-run", "--max-minutes-per-run", "2.5"]) == 0
    assert "at most 2.5 min each" in capsys.readouterr().out


@pytest.mark.parametrize("name", sorted(STUDIES))
def test_registered_study_plans_on_the_real_data(name, tmp_path):
    study = get_study(name)
    if not (DATA / study.dataset).is_dir():
        pytest.skip(f"{DATA / study.dataset} is absent (set PIXELWISE_DATA)")
    from pixelwise.data import SegmentationFolder
    from pixelwise.training.task import build_model

    folder = data_folder(study, DATA)
    runs = plan(study, StudyOptions(data=folder, out=tmp_path, runs_dir=tmp_path))
    assert len(runs) == 3 * len(study.variants)
    scored = SegmentationFolder(
        folder, split=study.eval_split, files=study.eval_files, num_classes=len(study.class_names)
    )
    assert len(scored) == {"camvid": 101, "isbi2012-em": 5}[study.dataset]
    for run in runs[::3]:  # one per variant: the architecture options must build
        config = run.config.to_dict()
        model = build_model(config, in_channels=scored.in_channels, classes=len(study.class_names))
        assert model.classes == len(study.class_names)
        if run.config.train_files:
            train = SegmentationFolder(
                folder, split=run.config.train_split, files=run.config.train_files, num_classes=2
            )
            expected = int(run.variant.group.split()[0]) if run.variant.group else 20  # "5 slices" → 5
            assert len(train) == expected
