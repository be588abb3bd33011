"""Studies over any train.py option: factors and their levels, the plan and run names (those of studies made before
--vary included), the effects, interactions and power estimate against slow obvious references, the study folder
(settings, old folders, locks), shards, device slots, and a report written from hand-made runs."""
from __future__ import annotations

import argparse
import json
import math
from pathlib import Path

import numpy as np
import pytest

from nets.yolo import YoloBody
from tests.synthetic import write_weights
from utils.model.config import ModelConfig
from utils.study import ablate
from utils.study import folder as folder_module
from utils.study.analysis import Design, effect_rows, interaction_rows, variant_rows
from utils.study.factors import (
    Run,
    check_grid,
    grid_of,
    normalize,
    parse_baseline,
    plan_runs,
    plan_variants,
    study_factors,
)
from utils.study.folder import StudyError, StudyFolder
from utils.study.stats import mean_interval, seeds_needed, t_quantile


# ------------------------------------------------------------------------------------------------ power estimate
# Paired t-test, two-sided alpha 0.05, power 0.8: sample sizes for effect sizes dz = d / sd as G*Power (Faul et al.
# 2007) and Cohen's tables give them.
@pytest.mark.parametrize("effect_size, seeds", [(0.5, 34), (0.8, 15), (1.0, 10), (1.5, 6), (2.0, 5)])
def test_seeds_needed_matches_published_paired_t_sample_sizes(effect_size, seeds):
    assert seeds_needed(0.01, 0.01 * effect_size) == seeds


def test_seeds_needed_gives_80_percent_power_by_simulation():
    """The slow, obvious reference: draw per-seed differences with the given spread and a true mean, and count how
    often the 95% interval excludes 0, at the n returned (>= 0.8) and at n - 1 (< 0.8)."""
    rng = np.random.default_rng(0)
    std, difference = 0.03, 0.02
    n = seeds_needed(std, difference)

    def power(seeds: int) -> float:
        draws = rng.normal(difference, std, size=(20000, seeds))
        half = t_quantile(0.975, seeds - 1) * draws.std(axis=1, ddof=1) / math.sqrt(seeds)
        return float(np.mean(draws.mean(axis=1) - half > 0))
    assert power(n) >= 0.79 and power(n - 1) < 0.8
    assert seeds_needed(None, 0.02) is None and seeds_needed(0.0, 0.02) == 2
    assert seeds_needed(0.03, -0.02) == n  # the size of the difference counts, not its sign


# ----------------------------------------------------------------------------------------------- factors and plan
def test_any_train_option_is_a_factor_parsed_by_its_own_type():
    factors = study_factors(["multi-scale=off,true,1", "mosaic=0,0.50,.5", "optimizer=sgd,adamw", "amp=on,off",
                             "input_shape=320;416,320"], None, None)
    assert [(f.name, f.levels) for f in factors] == [
        ("multi_scale", ("off", "on")), ("mosaic", ("0", "0.5")), ("optimizer", ("sgd", "adamw")),
        ("amp", ("on", "off")), ("input_shape", ("320", "416,320"))]
    args = {f.name: [f.train_args(level) for level in f.levels] for f in factors}
    assert args["multi_scale"] == [[], ["--multi-scale"]]
    assert args["amp"] == [["--amp"], ["--no-amp"]]
    assert args["mosaic"] == [["--mosaic", "0"], ["--mosaic", "0.5"]]


def test_recipes_loss_options_and_multi_scale_ranges_are_factors():
    factors = study_factors(["recipe=default,yolov5-assign", "loss=obj_target=one;obj_target=iou,ignore_threshold=1",
                             "multi_scale_range=0.5,1.5;0.75,1.25"], None, None)
    args = {f.name: [f.train_args(level) for level in f.levels] for f in factors}
    assert args["recipe"] == [["--recipe", "default"], ["--recipe", "yolov5-assign"]]
    assert args["loss"] == [["--loss", "obj_target=one"], ["--loss", "obj_target=iou,ignore_threshold=1"]]
    assert args["multi_scale_range"] == [["--multi-scale-range", "0.5,1.5"], ["--multi-scale-range", "0.75,1.25"]]
    with pytest.raises(ValueError, match="--loss assign"):
        study_factors(["loss=assign=nearest"], None, None)


@pytest.mark.parametrize("vary, message", [
    (["foo=1,2"], "train.py has no option --foo"),
    (["seed=0,1"], "use --seeds"),
    (["epochs=10,20"], "use --epochs"),
    (["multi_scale=maybe"], "is a switch; give on or off"),
    (["optimizer=sgd,lion"], "choose from sgd, adam, adamw"),
    (["lr=fast"], "lr=fast: 'fast' is not a finite number > 0"),
    (["mosaic=2"], "mosaic=2: '2' is not a number in \\[0, 1\\]"),
    (["input_shape=100"], "--vary input_shape=100"),
    (["phi=none,sk"], "invalid attention 'sk'"),
    (["mosaic"], "give NAME=V1,V2"),
    (["mosaic=0", "mosaic=0.5"], "given twice"),
    (["attention_at=neck,backbone"], "changes nothing without an attention block"),
])
def test_bad_factors_are_named_before_any_run(vary, message):
    with pytest.raises(ValueError, match=message):
        check_grid(grid_of(study_factors(vary, None, None)))


def test_phi_and_at_are_shorthands_and_the_default_is_every_attention():
    assert grid_of(study_factors(None, None, None)) == {"phi": ["none", "se", "cbam", "eca", "ca"],
                                                         "attention_at": ["neck"]}
    assert grid_of(study_factors(None, "0,2", "neck,backbone")) == grid_of(
        study_factors(["phi=none,cbam", "attention_at=neck,backbone"], None, None))
    assert grid_of(study_factors(["mosaic=0,0.5"], None, None)) == {"mosaic": ["0", "0.5"]}  # no attention factor
    grid = grid_of(study_factors(["multi_scale=off,on"], "none,cbam", None))
    assert list(grid) == ["phi", "attention_at", "multi_scale"]  # attention first: run names start with it
    with pytest.raises(ValueError, match="both given"):
        study_factors(["phi=se"], "cbam", None)


def test_run_names_of_attention_studies_are_those_made_before_vary_existed():
    runs = plan_runs({"phi": ["none", "se", "ca"], "attention_at": ["neck", "backbone"]}, seeds=2)
    assert [r.name for r in runs[:5]] == ["none-s0", "se-neck-s0", "se-backbone-s0", "ca-neck-s0", "ca-backbone-s0"]
    assert len(runs) == 2 * (1 + 2 * 2)  # none runs once per seed: it has no placement


def test_combinations_that_do_not_exist_are_planned_once():
    grid = {"phi": ["none", "cbam", "eca"], "attention_at": ["neck"], "cbam_kernel": ["7", "3"],
            "multi_scale": ["off", "on"]}
    variants = plan_variants(grid)
    # none: no placement, no kernel; eca has no spatial kernel; cbam: both kernels
    assert len(variants) == 2 * (1 + 2 + 1)
    assert normalize({"phi": "eca", "attention_at": "neck", "cbam_kernel": "3", "multi_scale": "on"}, list(grid)) == (
        ("phi", "eca"), ("attention_at", "neck"), ("cbam_kernel", "-"), ("multi_scale", "on"))
    names = [Run(v, 0).name for v in variants]
    assert "cbam-neck-cbam_kernel=3-multi_scale=on-s0" in names and "none-multi_scale=off-s0" in names


def test_levels_that_would_share_a_folder_name_are_refused():
    with pytest.raises(ValueError, match="same run folder name"):
        plan_runs({"weights": ["a/b.pth", "a_b.pth"]}, seeds=1)


def test_the_baseline_is_the_first_level_or_chosen():
    grid = {"phi": ["none", "cbam"], "attention_at": ["neck"], "mosaic": ["0", "0.5"]}
    assert parse_baseline(None, grid) == {"phi": "none", "attention_at": "neck", "mosaic": "0"}
    assert parse_baseline(["mosaic=0.50"], grid)["mosaic"] == "0.5"
    assert parse_baseline(["phi=cbam,mosaic=.5"], grid) == {"phi": "cbam", "attention_at": "neck", "mosaic": "0.5"}
    with pytest.raises(ValueError, match="mosaic has the levels 0, 0.5"):
        parse_baseline(["mosaic=0.7"], grid)
    with pytest.raises(ValueError, match="a factor of the study"):
        parse_baseline(["lr=0.1"], grid)


# ------------------------------------------------------------------------------------------------------ analysis
def synthetic_scores(design: Design, seeds: int, score) -> dict:
    rng = np.random.default_rng(1)
    return {(v, s): {"mAP50": score(dict(v), s) + rng.normal(0, 0.01), "mAP50_95": score(dict(v), s) / 2}
            for v in design.variants for s in range(seeds)}


def test_effects_and_interaction_equal_the_per_seed_formulas():
    grid = {"phi": ["none", "cbam"], "attention_at": ["neck"], "multi_scale": ["off", "on"]}
    design = Design(grid, parse_baseline(None, grid))
    scores = synthetic_scores(design, 4, lambda lv, s: 0.5 + 0.01 * s + 0.05 * (lv["phi"] == "cbam")
                              + 0.03 * (lv["multi_scale"] == "on"))

    def y(phi: str, ms: str, seed: int) -> float:
        at = "-" if phi == "none" else "neck"
        return scores[((("phi", phi), ("attention_at", at), ("multi_scale", ms)), seed)]["mAP50"]
    cbam = [((y("cbam", "off", s) - y("none", "off", s)) + (y("cbam", "on", s) - y("none", "on", s))) / 2
            for s in range(4)]
    both = [y("cbam", "on", s) - y("none", "on", s) - y("cbam", "off", s) + y("none", "off", s) for s in range(4)]
    effects = {(r["factor"], r["level"]): r for r in effect_rows(design, scores)}
    assert set(effects) == {("phi", "cbam"), ("multi_scale", "on")}  # one placement: no placement effect
    reference = mean_interval(cbam)
    row = effects[("phi", "cbam")]
    assert (row["delta_mAP50"], row["delta_mAP50_low"], row["delta_mAP50_high"]) == pytest.approx(
        (reference.mean, reference.low, reference.high))
    assert row["pairs"] == 4 and row["verdict_mAP50"] == "better" and row["over"] == "multi_scale: off, on"
    assert row["seeds_needed_mAP50"] == seeds_needed(float(np.std(cbam, ddof=1)), 0.02)
    (interaction,) = interaction_rows(design, scores)
    assert (interaction["factor_a"], interaction["level_a"], interaction["level_b"]) == ("phi", "cbam", "on")
    assert interaction["delta_mAP50"] == pytest.approx(mean_interval(both).mean)
    assert interaction["delta_mAP50_95"] == pytest.approx(0.0, abs=1e-12)  # the model above has no interaction


def test_a_placement_has_no_interaction_with_the_attention_and_only_complete_seeds_count():
    grid = {"phi": ["none", "se"], "attention_at": ["neck", "backbone"]}
    design = Design(grid, parse_baseline(None, grid))
    scores = synthetic_scores(design, 3, lambda lv, s: 0.4 + 0.1 * (lv["attention_at"] == "backbone"))
    del scores[((("phi", "se"), ("attention_at", "backbone")), 2)]  # seed 2 of one variant did not finish
    assert interaction_rows(design, scores) == []
    effects = {(r["factor"], r["level"]): r for r in effect_rows(design, scores)}
    assert effects[("phi", "se")]["pairs"] == 2  # seed 2 lacks one of the runs averaged over
    assert effects[("attention_at", "backbone")]["pairs"] == 2
    assert effects[("attention_at", "backbone")]["delta_mAP50_95"] == pytest.approx(0.05)


def test_variants_are_ranked_with_their_spread_and_compared_with_the_baseline():
    grid = {"mosaic": ["0", "0.5", "1"]}
    design = Design(grid, parse_baseline(["mosaic=0.5"], grid))
    scores = synthetic_scores(design, 3, lambda lv, s: {"0": 0.3, "0.5": 0.5, "1": 0.4}[lv["mosaic"]])
    rows = {r["mosaic"]: r for r in variant_rows(design, scores, metric="mAP50_95")}
    assert [rows[k]["rank"] for k in ("0", "0.5", "1")] == [3, 1, 2]
    assert rows["0.5"].get("is_baseline") and "delta_mAP50" not in rows["0.5"]
    values = [scores[((("mosaic", "0"),), s)]["mAP50"] for s in range(3)]
    assert (rows["0"]["mAP50_min"], rows["0"]["mAP50_max"]) == (min(values), max(values))
    assert rows["0"]["delta_mAP50_95"] == pytest.approx(-0.1) and rows["0"]["verdict_mAP50_95"] == "worse"


# ---------------------------------------------------------------------------------------------------- study folder
OLD_SETTINGS = {"data": "/data/VOCdevkit", "epochs": 20, "eval_split": "test", "evaluate": "best",
                "train_flags": ["--input-shape", "64"]}


def old_study(folder: Path, weights: bool = False) -> Path:
    """A study folder as utils.ablate wrote it before --vary: study.json without format, results with attention and
    placement."""
    folder.mkdir(parents=True)
    (folder / "study.json").write_text(json.dumps(OLD_SETTINGS))
    for run, attention, placement, seed, score in [("none-s0", "none", "-", 0, 0.40), ("none-s1", "none", "-", 1, 0.45),
                                                   ("se-neck-s0", "se", "neck", 0, 0.43),
                                                   ("se-neck-s1", "se", "neck", 1, 0.50)]:
        (folder / run).mkdir()
        (folder / run / "result.json").write_text(json.dumps(
            {"run": run, "attention": attention, "placement": placement, "seed": seed, "mAP50": score,
             "mAP50_95": score / 3, "weights": "best.pth", "split": "test", "device": "cpu", "train_seconds": 60.0,
             "eval_seconds": 5.0, "resumed": False}))
        if weights:
            config = ModelConfig(classes=["a", "b"], attention=attention, input_shape=[64, 64])
            model = YoloBody(config.anchors_mask, 2, phi=attention)
            write_weights(folder / run / "best.pth", model.state_dict(), config)
    return folder


def test_a_study_folder_from_before_vary_resumes_with_phi_and_is_refused_with_vary(tmp_path):
    folder = StudyFolder(old_study(tmp_path / "old"))
    grid = grid_of(study_factors(None, "none,se,cbam", None))
    with pytest.raises(ValueError, match="before studies could vary other train.py options"):
        folder.record(OLD_SETTINGS, grid_of(study_factors(["multi_scale=off,on"], None, None)), 2)
    stored = folder.record(OLD_SETTINGS, grid, 2)  # the same command as before, one attention more
    assert stored["format"] == 2 and stored["grid"] == grid and stored["seeds"] == 2
    finished = [run.name for run in plan_runs(grid, 2) if folder.result(run) is not None]
    assert finished == ["none-s0", "se-neck-s0", "none-s1", "se-neck-s1"]  # only cbam's runs are left to do
    with pytest.raises(ValueError, match="epochs = 20, not 30"):
        folder.record({**OLD_SETTINGS, "epochs": 30}, grid, 2)


def test_levels_and_seeds_may_be_added_but_not_factors(tmp_path):
    folder = StudyFolder(tmp_path / "s")
    folder.record(OLD_SETTINGS, {"mosaic": ["0", "0.5"]}, 2)
    stored = folder.record(OLD_SETTINGS, {"mosaic": ["1", "0"]}, 3)
    assert stored["grid"] == {"mosaic": ["0", "0.5", "1"]} and stored["seeds"] == 3
    with pytest.raises(ValueError, match="keeps its factors"):
        folder.record(OLD_SETTINGS, {"mosaic": ["0"], "mixup": ["0", "0.5"]}, 3)
    (folder.path / "study.json").write_text(json.dumps({**stored, "format": 99}))
    with pytest.raises(StudyError, match="newer version"):
        folder.read_settings()


def test_a_run_in_progress_elsewhere_is_not_claimed_twice(tmp_path):
    if folder_module.fcntl is None:
        pytest.skip("no advisory locks on this platform")
    run = Run((("mosaic", "0"),), 0)
    first, second = StudyFolder(tmp_path / "s"), StudyFolder(tmp_path / "s")
    held = first.claim(run)
    assert held is not None and second.claim(run) is None
    held.close()
    again = second.claim(run)
    assert again is not None
    again.close()


def report_args(study: Path, *extra: str) -> argparse.Namespace:
    args, _ = ablate.get_args_parser().parse_known_args(["--study", str(study), "--report", *extra])
    return args


def test_report_of_an_old_folder_is_refused_until_its_command_runs_again_then_written(tmp_path, capsys):
    study = old_study(tmp_path / "old", weights=True)
    assert ablate.main(["--study", str(study), "--report"]) == 1
    assert "run the study's own command once more" in capsys.readouterr().err
    folder = StudyFolder(study)
    folder.record(OLD_SETTINGS, grid_of(study_factors(None, "none,se", None)), 2)  # what rerunning its command does
    assert ablate.main(["--study", str(study), "--report", "--speed-images", "2", "--speed-rounds", "1",
                        "--devices", "cpu"]) == 0
    effects = (study / "ablation_effects.csv").read_text().splitlines()
    assert effects[1].startswith("phi,se,none,,1,2,0.04,")  # (0.43 - 0.40 + 0.50 - 0.45) / 2 over 2 seeds
    variants = (study / "ablation.csv").read_text().splitlines()
    assert variants[0].startswith("phi,attention_at,seeds,rank,") and len(variants) == 3
    assert "| 1 | se | neck | 2 | 0.4650 ± 0.0495 | 0.4300 – 0.5000 |" in (study / "ablation.md").read_text()
    assert (study / "ablation.png").stat().st_size > 0


# ----------------------------------------------------------------------------------------------- shards and devices
@pytest.mark.parametrize("count", [1, 2, 3, 7])
def test_shards_split_the_plan_into_disjoint_parts_that_cover_it(tmp_path, count):
    plans = []
    for index in range(count):
        args = ablate.get_args_parser().parse_args(["--vary", "mosaic=0,0.5,1", "--vary", "multi_scale=off,on",
                                                    "--seeds", "2", "--study", str(tmp_path), "--shard",
                                                    f"{index}/{count}", "--devices", "cpu"])
        study = ablate.Study(args, [], study_factors(args.vary, None, None))
        plans.append(study.todo)
    names = [run.name for todo in plans for run in todo]
    assert sorted(names) == sorted(run.name for run in study.runs) and len(names) == 12
    assert max(map(len, plans)) - min(map(len, plans)) <= 1


@pytest.mark.parametrize("text", ["2/2", "1", "-1/2", "a/b", "1/0"])
def test_a_bad_shard_is_one_clear_error(text):
    with pytest.raises(ValueError, match="give I/N with 0 <= I < N"):
        ablate.parse_shard(text)


def test_torchrun_runs_take_groups_of_devices_as_the_process_sees_them(monkeypatch):
    monkeypatch.setattr(ablate.torch.cuda, "device_count", lambda: 4)
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "4,5,6,7")  # e.g. what SLURM gave this job
    slots = ablate.device_slots(None, 2)
    assert [(s.device, s.visible, s.nproc) for s in slots] == [("cuda", "4,5", 2), ("cuda", "6,7", 2)]
    assert slots[1].env()["CUDA_VISIBLE_DEVICES"] == "6,7" and slots[1].eval_device == "cuda:0"
    assert slots[0].train_launcher()[1:6] == ["-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2"]
    assert ablate.device_slots("cpu", 2) == [ablate.DeviceSlot("cpu", None, 2)]
    assert ablate.device_slots("1", 1) == [ablate.DeviceSlot("cuda:1")]
    with pytest.raises(ValueError, match="needs 2 CUDA devices per run"):
        ablate.device_slots("3", 2)


def test_each_run_gets_its_levels_and_nothing_else_of_the_grid(tmp_path):
    args = ablate.get_args_parser().parse_args(["--phi", "none,cbam", "--vary", "multi_scale=off,on", "--vary",
                                                "mosaic=0,0.5", "--study", str(tmp_path / "s"), "--devices", "cpu"])
    study = ablate.Study(args, ["--input-shape", "64"], study_factors(args.vary, args.phi, args.at))
    by_name = {run.name: run for run in study.runs}
    command = study.train_command(by_name["none-multi_scale=on-mosaic=0.5-s0"], study.slots[0])
    assert "--attention-at" not in command and "--multi-scale" in command
    assert command[command.index("--mosaic") + 1] == "0.5" and command[command.index("--phi") + 1] == "none"
    command = study.train_command(by_name["cbam-neck-multi_scale=off-mosaic=0-s1"], study.slots[0])
    assert "--multi-scale" not in command and command[command.index("--attention-at") + 1] == "neck"
    assert command[command.index("--seed") + 1] == "1" and command[-2:] == ["--input-shape", "64"]


def test_each_run_is_scored_in_the_precision_it_trained_in(tmp_path):
    args = ablate.get_args_parser().parse_args(["--vary", "precision=fp32,bf16", "--study", str(tmp_path / "s"),
                                                "--devices", "cpu"])
    study = ablate.Study(args, ["--workers", "1"], study_factors(args.vary, None, None))
    commands = {run.name: study.eval_command(run, "cpu") for run in study.runs}
    assert commands["precision=bf16-s0"][-4:] == ["--workers", "1", "--precision", "bf16"]
    assert commands["precision=fp32-s0"][-2:] == ["--precision", "fp32"]
    args = ablate.get_args_parser().parse_args(["--vary", "mosaic=0,0.5", "--study", str(tmp_path / "t")])
    study = ablate.Study(args, ["--no-amp"], study_factors(args.vary, None, None))
    assert study.eval_command(study.runs[0], "cpu")[-1] == "--no-amp"  # passed through: every run alike
