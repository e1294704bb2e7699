"""``python -m sslsearch.sizes``: the budget rule, the splits it relies on, its files, resume, bad
input, and the i-Mix − N-pair sentence computed from the numbers (issue 34)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import torch

from sslsearch import sizes
from sslsearch.config import trial_config
from sslsearch.data import load_dataset
from sslsearch.data.assemble import Options, train_val_indices
from sslsearch.reporting.sizes_report import gain_sentence, markdown, paired_gain
from sslsearch.trial.trial import setup_trial

ROOT = Path(__file__).resolve().parents[1]
# Digits, a 256-image reference of batch 32 for 2 epochs: 16 steps, so size 64 (2 steps an epoch)
# trains 8 epochs and 128 trains 4; a narrow CNN and a short probe keep a run near a second.
TINY_EXPERIMENT = """\
trial:
  dataset: digits
  max_train_samples: 256
  backbone: small_cnn
  backbone_width: 8
  epochs: 2
  batch_size: 32
  warmup_epochs: 1
  crop_min_scale: 0.5
  flip_p: 0.0
  grayscale_p: 0.0
  knn_k: 10
  probe_max_iter: 10
  device: cpu
"""


@pytest.fixture
def tiny(tmp_path: Path) -> list[str]:
    """The arguments of a tiny sizes command writing under ``tmp_path``."""
    path = tmp_path / "tiny.yaml"
    path.write_text(TINY_EXPERIMENT)
    return ["--experiment", str(path), "--storage", str(tmp_path / "results"), "--out", "s"]


def test_equal_steps_rule_gives_the_documented_epochs() -> None:
    """fashion_mnist's own run: 2,000 images of batch 64 for 6 epochs, 31 × 6 = 186 steps."""
    ref = sizes.Reference(size=2000, steps_per_epoch=31, epochs=6, warmup_epochs=1.0)
    assert ref.steps == 186
    for per, epochs in ((3, 62), (7, 27), (15, 13), (31, 6), (125, 2)):  # 250 … 8,000 images
        got, warmup = sizes.size_schedule(per, ref, "steps")
        assert got == epochs and 186 <= got * per < 186 + per  # S, rounded up to a whole epoch
        assert round(warmup * per) == 31 or warmup == got  # the reference's warm-up steps
    assert sizes.size_schedule(3, ref, "epochs") == (6, 1.0)


def test_plan_follows_the_rule_and_the_loops_steps(tiny: list[str]) -> None:
    args = sizes.build_parser().parse_args(
        [*tiny, "--methods", "npair,imix", "--sizes", "128,64", "--seeds", "0"])
    plan = sizes.build_plan(args)
    assert plan.reference.steps == 16
    got = {(s.method, s.size): (s.cfg.epochs, s.steps_per_epoch, s.cfg.warmup_epochs)
           for s in plan.specs}
    assert got == {("npair", 64): (8, 2, 4.0), ("imix", 64): (8, 2, 4.0),
                   ("npair", 128): (4, 4, 2.0), ("imix", 128): (4, 4, 2.0)}
    assert all(s.cfg.max_train_samples == s.size and s.cfg.split_seed == s.seed
               and not s.cfg.label_free for s in plan.specs)
    epochs = sizes.build_plan(sizes.build_parser().parse_args(
        [*tiny, "--methods", "npair", "--sizes", "64", "--seeds", "0", "--budget", "epochs"]))
    assert [(s.cfg.epochs, s.cfg.warmup_epochs) for s in epochs.specs] == [(2, 1.0)]


def test_validation_and_test_splits_are_the_same_at_every_size() -> None:
    """``max_train_samples`` subsets the training split only; one seed's subsets are nested."""
    small, large = (load_dataset("digits", seed=3, max_train_samples=n) for n in (100, 300))
    assert torch.equal(small.val.x, large.val.x) and torch.equal(small.test.x, large.test.x)
    assert len(small.train) == 100 and len(large.train) == 300
    labels = torch.arange(10).repeat(100)
    opts = [Options(0.1, 3, n, None, torch.device("cpu")) for n in (100, 300)]
    (t100, v100), (t300, v300) = (train_val_indices("x", labels, o) for o in opts)
    assert torch.equal(v100, v300) and set(t100.tolist()) <= set(t300.tolist())


def test_the_random_init_backbone_is_the_same_for_every_method() -> None:
    """What lets one random-init probe per split and seed stand for every method's."""
    data = load_dataset("digits", max_train_samples=64)
    states = [setup_trial(trial_config({"method": m, "backbone_width": 8, "seed": 5}), data,
                          torch.device("cpu")).method.backbone.state_dict()
              for m in ("npair", "imix", "simclr", "byol")]
    for other in states[1:]:
        assert all(torch.equal(states[0][k], other[k]) for k in states[0])


def test_runs_write_json_csv_markdown_and_png(tiny: list[str], tmp_path: Path) -> None:
    rc = sizes.main([*tiny, "--methods", "npair,imix", "--sizes", "64,128", "--seeds", "0"])
    assert rc == 0
    folder = tmp_path / "results" / "s"
    runs = json.loads((folder / "sizes.json").read_text())["runs"]
    assert {(r["method"], r["size"], r["epochs"], r["steps"]) for r in runs} == {
        ("npair", 64, 8, 16), ("imix", 64, 8, 16), ("npair", 128, 4, 16), ("imix", 128, 4, 16)}
    for r in runs:
        for key in ("val_knn_acc", "probe_test_acc", "raw_knn_acc", "raw_probe_test_acc",
                    "init_knn_acc", "init_probe_test_acc"):
            assert 0.0 <= r[key] <= 1.0, key
    # One split per size and seed: its baselines are the same for both methods.
    for size in (64, 128):
        assert len({(r["raw_knn_acc"], r["init_knn_acc"], r["init_probe_test_acc"])
                    for r in runs if r["size"] == size}) == 1
    assert len((folder / "sizes.csv").read_text().splitlines()) == 5
    md = (folder / "sizes.md").read_text()
    assert "| *raw pixels* |" in md and "| *random init* |" in md and "i-Mix's gain" in md
    assert (folder / "sizes.png").read_bytes()[:4] == b"\x89PNG"


def _fake_record(spec: sizes.RunSpec) -> dict[str, Any]:
    acc = 0.5 + spec.size / 1000 + (0.02 if spec.method == "imix" else 0.0)
    return {**spec.header(), "val_knn_acc": acc, "probe_test_acc": acc, "raw_knn_acc": 0.5,
            "raw_probe_test_acc": 0.5, "init_knn_acc": 0.4, "init_probe_test_acc": 0.4,
            "failure": None, "seconds": 0.0}


def test_resume_skips_finished_runs(tiny: list[str], tmp_path: Path,
                                    monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[tuple[str, int, int, str]] = []

    def fake(spec: sizes.RunSpec) -> dict[str, Any]:
        if len(calls) == 2 and stop:
            raise KeyboardInterrupt
        calls.append(spec.key)
        return _fake_record(spec)

    monkeypatch.setattr(sizes, "run_one", fake)
    argv = [*tiny, "--methods", "npair,imix", "--sizes", "64,128", "--seeds", "0"]
    stop = True
    assert sizes.main(argv) == 130  # interrupted after two runs, both kept
    stop = False
    assert sizes.main(argv) == 0
    assert len(calls) == 4 and len(set(calls)) == 4  # the last two only, on resume
    assert sizes.main(argv) == 0 and len(calls) == 4  # nothing left to run
    assert sizes.main([*argv[:-1], "0,1"]) == 0 and len(calls) == 8  # a new seed: its 4 runs
    assert sizes.main([*argv, "--budget", "epochs"]) == 0 and len(calls) == 12  # keyed by budget
    folder = tmp_path / "results" / "s"
    assert len(json.loads((folder / "sizes.json").read_text())["runs"]) == 12
    # Each budget's report reads its own runs and has its own files.
    assert "(epochs budget)" in (folder / "sizes-epochs.md").read_text()
    assert "(steps budget)" in (folder / "sizes.md").read_text()


@pytest.mark.parametrize("flags,message", [
    (["--methods", "npair,nosuch", "--sizes", "64"], "nosuch unknown"),
    (["--methods", "", "--sizes", "64"], "--methods '': empty"),
    (["--methods", "npair", "--sizes", ""], "--sizes '': empty"),
    (["--methods", "npair", "--sizes", "64,x"], "expected comma-separated ints"),
    (["--methods", "npair", "--sizes", "0"], "--sizes 0: out of range"),
    (["--methods", "npair", "--sizes", "100000"], "--sizes 100000: out of range"),
    (["--methods", "npair", "--sizes", "16"], "below the experiment's batch size 32"),
    (["--methods", "npair", "--sizes", "64", "--seeds", ""], "--seeds '': empty"),
    (["--methods", "npair", "--sizes", "64", "--out", "../x"], "--out '../x'"),
    (["--methods", "npair", "--sizes", "64", "--bogus"], "unrecognized arguments"),
])
def test_bad_input_is_one_line_and_exit_2(tiny: list[str], flags: list[str], message: str,
                                          capsys: pytest.CaptureFixture[str]) -> None:
    assert sizes.main([*tiny, *flags]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and err.count("\n") == 1 and message in err, err


def test_an_out_folder_that_cannot_be_written_is_bad_input(
        tiny: list[str], tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "a_file").write_text("")  # as root no mode bit stops a write; a file does
    argv = [*tiny[:2], "--storage", str(tmp_path / "a_file"), "--methods", "npair",
            "--sizes", "64"]
    assert sizes.main(argv) == 2
    assert "cannot write to" in capsys.readouterr().err


def test_another_experiments_results_are_not_mixed_in(
        tiny: list[str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setattr(sizes, "run_one", _fake_record)
    argv = [*tiny, "--methods", "npair", "--sizes", "64", "--seeds", "0"]
    assert sizes.main(argv) == 0
    Path(tiny[1]).write_text(TINY_EXPERIMENT.replace("knn_k: 10", "knn_k: 5"))
    assert sizes.main(argv) == 2
    assert "holds runs of other settings" in capsys.readouterr().err


def test_the_command_exits_2_with_one_line_and_loads_no_search_library(tmp_path: Path) -> None:
    bad = subprocess.run([sys.executable, "-m", "sslsearch.sizes", "--experiment", "quick",
                          "--methods", "nosuch", "--sizes", "100", "--storage", str(tmp_path)],
                         capture_output=True, text=True, cwd=ROOT)
    assert bad.returncode == 2 and bad.stdout == "", bad
    assert bad.stderr.startswith("error: --methods: nosuch unknown") and \
        bad.stderr.count("\n") == 1, bad.stderr
    code = ("import sys, sslsearch.sizes\n"
            "print(','.join(m for m in ('ray', 'optuna', 'mlflow') if m in sys.modules))\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT,
                         check=True)
    assert out.stdout.strip() == ""


def _records(diffs: dict[int, list[float]]) -> list[dict[str, Any]]:
    """N-pair at 70 % and i-Mix ``diff`` points above it, per size and seed."""
    out = []
    for size, per_seed in diffs.items():
        for seed, diff in enumerate(per_seed):
            for method, acc in (("npair", 0.70), ("imix", 0.70 + diff / 100)):
                out.append({"method": method, "size": size, "seed": seed, "budget": "steps",
                            "epochs": 1, "steps": 1, "steps_per_epoch": 1, "warmup_epochs": 1.0,
                            "val_knn_acc": acc, "probe_test_acc": acc, "raw_knn_acc": 0.6,
                            "raw_probe_test_acc": 0.6, "init_knn_acc": 0.5 + seed / 100,
                            "init_probe_test_acc": 0.5, "failure": None})
    return out


def test_the_imix_sentence_is_computed_from_the_numbers() -> None:
    runs = _records({250: [2.0, 3.0, 4.0], 500: [1.0, 2.0, 3.0], 1000: [1.0, 1.0, 1.0]})
    gains = paired_gain(runs, "val_knn_acc")
    assert {s: (round(m, 6), round(sd, 6), n) for s, (m, sd, n) in gains.items()} == {
        250: (3.0, 1.0, 3), 500: (2.0, 1.0, 3), 1000: (1.0, 0.0, 3)}
    text = gain_sentence(gains, "validation kNN")
    assert "250 images +3.00 ± 1.00 (3 seeds); 500 images +2.00 ± 1.00 (3 seeds)" in text
    assert "It grows at every step as the data shrinks (+3.00 at 250 images, +1.00 at 1,000)" \
        in text
    assert "within one sd of zero at 0 of 3 sizes" in text
    flat = gain_sentence(paired_gain(_records({250: [0.5, -0.5], 500: [1.0, 2.0]}),
                                     "probe_test_acc"), "test linear probe")
    assert "It does not grow as the data shrinks (+0.00 at 250 images, +1.50 at 500)" in flat
    assert "within one sd of zero at 1 of 2 sizes" in flat
    runs.append({**runs[0], "method": "imix", "seed": 9, "failure": "nan_loss"})
    md = markdown(runs, "steps")  # a failed run is listed, not averaged
    assert "| *random init* | 51.0 ± 1.0 | 51.0 ± 1.0 | 51.0 ± 1.0 |" in md
    assert "imix size 250 seed 9 (nan_loss)" in md
    assert "no size has finished runs of both" in gain_sentence({}, "x")
    one = gain_sentence(paired_gain(_records({250: [1.0]}), "val_knn_acc"), "x")
    assert "250 images +1.00 (1 seed)." in one and "sd of zero" not in one
