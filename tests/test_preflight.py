"""Issue 31: everything that can be checked is checked before the first trial.

Each class of bad input a new user brings exits 2 with one line naming the file or field, no
traceback, before Ray starts and before any MLflow run or trial folder exists. Most tests call
``sslsearch.run.main`` in-process (the pre-flight fails before Ray); one runs the command to
prove the exit path, one runs a real (one-trial) sweep that skips bad images in a messy folder.
"""

from __future__ import annotations

import os
import struct
import subprocess
import sys
import time
import zlib
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
import yaml
from PIL import Image

from sslsearch.config import load_experiment
from sslsearch.data import load_dataset
from sslsearch.data.assemble import Options, split_sizes, train_val_indices
from sslsearch.data.imagefiles import list_labeled
from sslsearch.errors import ConfigError
from sslsearch.run import main
from sslsearch.search import preflight, sweepdir
from sslsearch.search.space import load_space

# ----------------------------------------------------------------------------- fixtures


def write_folder(root: Path, per_class: int = 20, classes: tuple[str, ...] = ("a", "b"),
                 n_test: int = 3, messy: bool = False) -> None:
    """train/<class>/ and test/<class>/ of small PNGs; ``messy``: greyscale, RGB, RGBA, palette
    and 16-bit PNGs of different sizes, in turn."""
    rng = np.random.default_rng(0)
    for part, n in (("train", per_class), ("test", n_test)):
        for cls in classes:
            folder = root / part / cls
            folder.mkdir(parents=True, exist_ok=True)
            for i in range(n):
                h, w = (12 + i % 5, 10 + 2 * (i % 3)) if messy else (12, 12)
                image = Image.fromarray(rng.integers(0, 255, (h, w, 3), np.uint8))
                if messy:
                    image = [image.convert("L"), image, image.convert("RGBA"), image.convert("P"),
                             Image.fromarray(rng.integers(0, 65535, (h, w), np.uint16))][i % 5]
                image.save(folder / f"{i:03d}.png")


def png_declaring(width: int, height: int) -> bytes:
    """A well-formed PNG whose header declares ``width`` x ``height`` (its data is a few bytes):
    a decompression bomb for PIL, which refuses it on open."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return (struct.pack(">I", len(data)) + kind + data
                + struct.pack(">I", zlib.crc32(kind + data)))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr)
            + chunk(b"IDAT", zlib.compress(b"\x00" * 64)) + chunk(b"IEND", b""))


def damage(path: Path, kind: str) -> None:
    if kind == "truncated":
        data = path.read_bytes()
        path.write_bytes(data[: len(data) // 2])
    elif kind == "empty":
        path.write_bytes(b"")
    else:
        path.write_bytes(png_declaring(40_000, 40_000))


def experiment(tmp_path: Path, **trial: Any) -> Path:
    """A one-trial, one-epoch experiment on an ImageFolder (override any trial field)."""
    path = tmp_path / "exp.yaml"
    doc = {"trial": {"dataset": "imagefolder", "image_size": 16, "backbone": "small_cnn",
                     "backbone_width": 8, "epochs": 1, "batch_size": 16, "knn_k": 5,
                     "probe": False, **trial},
           "search": {"num_samples": 1, "max_concurrent": 1, "grace_period": 1}}
    path.write_text(yaml.safe_dump(doc))
    return path


def refused(args: list[str], capsys: pytest.CaptureFixture[str], *names: str) -> str:
    """``python -m sslsearch.run ARGS`` in-process: exit 2, one line naming ``names``, and
    nothing started (no MLflow store, no Tune state, no trial folder)."""
    t0 = time.time()
    code = main(args)
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.strip()]
    assert code == 2, err
    assert len(lines) == 1 and lines[0].startswith("error: ") and "Traceback" not in err, err
    for name in names:
        assert name in lines[0], (name, lines[0])
    assert time.time() - t0 < 60
    cwd = Path.cwd()
    assert not list(cwd.rglob("mlflow.db")) and not list(cwd.rglob("params.json"))
    assert not list(cwd.rglob("experiment_state-*.json"))
    return lines[0]


SWEEP = ["--space", "simclr", "--storage", "results", "--quiet", "--no-confirm"]

# ----------------------------------------------------------------------------- bad files


@pytest.mark.parametrize("kinds", [("truncated",), ("empty",), ("bomb",),
                                   ("truncated", "empty", "bomb")])
def test_bad_image_files_refuse_the_sweep_naming_the_first_and_counting_the_rest(
        tmp_path: Path, capsys: pytest.CaptureFixture[str], kinds: tuple[str, ...]) -> None:
    write_folder(tmp_path / "photos")
    victims = [tmp_path / "photos" / "train" / "a" / f"{i:03d}.png" for i in range(len(kinds))]
    for path, kind in zip(victims, kinds, strict=True):
        damage(path, kind)
    why = {"truncated": "truncated or corrupt", "empty": "empty file (0 bytes)",
           "bomb": "declares 40000x40000 pixels, over PIL's decompression-bomb limit"}
    line = refused([*SWEEP, "--experiment", str(experiment(tmp_path)), "--name", "s",
                    "--data-dir", "photos"], capsys, str(victims[0]), why[kinds[0]],
                   "--skip-bad-images")
    listed = tmp_path / "results" / "s" / "bad_images.txt"
    assert str(listed) in line
    if len(kinds) > 1:
        assert f"and {len(kinds) - 1} other bad images" in line
    assert [row.split("\t")[0] for row in listed.read_text().splitlines()] == list(map(str,
                                                                                     victims))


def test_the_refusal_is_one_line_from_the_command_itself(tmp_path: Path) -> None:
    """The exit path proven end to end: the command, not main(), exits 2 in one line."""
    write_folder(tmp_path / "photos")
    damage(tmp_path / "photos" / "test" / "b" / "001.png", "truncated")
    t0 = time.time()
    out = subprocess.run([sys.executable, "-m", "sslsearch.run", *SWEEP, "--experiment",
                          str(experiment(tmp_path)), "--data-dir", "photos"], cwd=tmp_path,
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 2 and time.time() - t0 < 60, out.stderr
    assert out.stderr.count("\n") == 1 and "Traceback" not in out.stderr
    assert "test/b/001.png: truncated or corrupt" in out.stderr
    assert not (tmp_path / "mlflow.db").exists()


@pytest.mark.parametrize("command", ["compare", "bench search"])
def test_compare_and_bench_search_run_the_preflight_too(
        tmp_path: Path, capsys: pytest.CaptureFixture[str], command: str) -> None:
    from sslsearch.bench.search import main as bench_search

    write_folder(tmp_path / "photos")
    damage(tmp_path / "photos" / "train" / "b" / "004.png", "empty")
    args = ["--space", "simclr", "--experiment", str(experiment(tmp_path)), "--data-dir",
            "photos", "--storage", "results", "--name", "c"]
    code = main([*args, "--compare"]) if command == "compare" else bench_search(args)
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1 and "Traceback" not in err, err
    assert "train/b/004.png: empty file (0 bytes)" in err
    hint = "--skip-bad-images" if command == "compare" else "trial.skip_bad_images: true"
    assert hint in err
    assert not (tmp_path / "mlflow.db").exists() and not list(tmp_path.rglob("params.json"))


def test_skip_bad_images_runs_a_messy_folder_without_them_and_records_them(
        tmp_path: Path) -> None:
    """Greyscale, RGB, RGBA, palette and 16-bit PNGs of several sizes (image_size set) train;
    the three bad files are left out with one warning line, by the pre-flight and the trial's
    loader alike, and listed on the sweep's MLflow run."""
    from mlflow.tracking import MlflowClient

    write_folder(tmp_path / "photos", messy=True)
    bad = [tmp_path / "photos" / "train" / cls / f"00{i}.png" for cls, i in
           (("a", 1), ("b", 2), ("b", 3))]
    for path, kind in zip(bad, ("truncated", "empty", "bomb"), strict=True):
        damage(path, kind)
    out = subprocess.run([sys.executable, "-m", "sslsearch.run", *SWEEP, "--experiment",
                          str(experiment(tmp_path)), "--data-dir", "photos", "--name", "s",
                          "--skip-bad-images"], cwd=tmp_path, capture_output=True, text=True,
                         timeout=300)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    listed = tmp_path / "results" / "s" / "bad_images.txt"
    warning = [line for line in out.stderr.splitlines() if "--skip-bad-images" in line]
    assert len(warning) == 1 and "leaving out 3 bad images" in warning[0], out.stderr
    assert str(listed) in warning[0]
    client = MlflowClient(tracking_uri=f"sqlite:///{tmp_path / 'mlflow.db'}")
    runs = client.search_runs([client.get_experiment_by_name("sslsearch").experiment_id])
    parent = next(r for r in runs if r.data.tags["sslsearch.role"] == "parent")
    assert parent.data.params["skipped_bad_images"] == "3"
    assert "bad_images.txt" in [a.path for a in client.list_artifacts(parent.info.run_id)]
    children = [r for r in runs if r.data.tags["sslsearch.role"] == "trial"]
    assert len(children) == 1 and children[0].info.status == "FINISHED"
    assert children[0].data.params["skip_bad_images"] == "True"


def test_a_sixteen_bit_png_is_scaled_not_clipped_to_white(tmp_path: Path) -> None:
    write_folder(tmp_path / "photos", messy=True)
    bundle = load_dataset("imagefolder", data_dir=tmp_path / "photos", image_size=16)
    x = torch.cat([bundle.train.x, bundle.val.x])  # type: ignore[union-attr]
    assert x.shape[1:] == (3, 16, 16)
    assert all(int(img.float().std()) > 0 for img in x)  # not one image a flat white square

# ----------------------------------------------------------------------------- classes


@pytest.mark.parametrize("layout, names", [
    ("empty_class", ["class 'b' has no training images", "train/b/"]),
    ("three_images", ["class 'a' has 1 image: 1 for training and 0 for validation",
                      "val_fraction 0.1"]),
    ("single_class", ["1 class ('a', 20 images)", "trial.labels: false"]),
])
def test_a_folder_that_cannot_make_a_classification_task_exits_2(
        tmp_path: Path, capsys: pytest.CaptureFixture[str], layout: str,
        names: list[str]) -> None:
    root = tmp_path / "photos"
    if layout == "empty_class":
        write_folder(root)
        for path in (root / "train" / "b").iterdir():
            path.unlink()
    elif layout == "three_images":
        write_folder(root, per_class=1, classes=("a", "b", "c"))
    else:
        write_folder(root, classes=("a",))
    refused([*SWEEP, "--experiment", str(experiment(tmp_path)), "--data-dir", "photos"], capsys,
            f"data_dir {root}", *names)


def test_every_split_the_space_can_draw_is_checked(tmp_path: Path,
                                                   capsys: pytest.CaptureFixture[str]) -> None:
    """max_train_samples drawn by the space: its smallest choice leaves a class no training
    image; a training split smaller than the batch is fine (the batch shrinks)."""
    write_folder(tmp_path / "photos")
    space = tmp_path / "space.yaml"
    space.write_text("method: simclr\ntrial:\n  max_train_samples: {choice: [1, 30]}\n")
    refused(["--space", str(space), "--storage", "results", "--experiment",
             str(experiment(tmp_path)), "--data-dir", "photos"], capsys,
            "class 'b' has 20 images: 0 for training", "max_train_samples 1")
    exp = load_experiment(experiment(tmp_path, data_dir=str(tmp_path / "photos"),
                                     batch_size=256))
    assert preflight.check_sweep(exp, None, str(tmp_path / "r"), "s").skipped == ()


def test_the_counts_come_from_the_loaders_own_allocation() -> None:
    """split_sizes (what the pre-flight judges) is what train_val_indices (what the loader
    draws) gives, class by class, for every shape of data set."""
    rng = np.random.default_rng(0)
    for case in range(300):
        counts = [int(c) for c in rng.integers(0, 25, size=int(rng.integers(1, 6)))]
        if sum(counts) < 2:
            continue
        y = torch.tensor([k for k, c in enumerate(counts) for _ in range(c)])
        fraction, subset = float(rng.choice([0.05, 0.1, 0.3])), [None, 1, 4, 30][case % 4]
        train, val = split_sizes(counts, fraction, subset)
        tr, va = train_val_indices("x", y, Options(fraction, case, subset, None,
                                                   torch.device("cpu")))
        assert torch.bincount(y[tr], minlength=len(counts)).tolist() == train
        assert torch.bincount(y[va], minlength=len(counts)).tolist() == val

# ----------------------------------------------------------------------------- links


def test_a_symlink_loop_is_not_followed_by_the_loader_or_the_preflight(tmp_path: Path) -> None:
    root = tmp_path / "photos"
    write_folder(root, per_class=12)
    (root / "train" / "a" / "loop").symlink_to("..")  # the loop of the issue
    (root / "train" / "b" / "same").symlink_to("../a")  # another class's folder
    (tmp_path / "outside.png").write_bytes((root / "test" / "a" / "000.png").read_bytes())
    (root / "train" / "b" / "out.png").symlink_to(tmp_path / "outside.png")  # leaves the folder
    (root / "train" / "b" / "twice.png").symlink_to("000.png")  # a file already listed
    listing = list_labeled(root / "train")
    assert listing.counts() == [12, 12] and len(set(listing.files)) == 24
    assert len(listing.skipped_links) == 4
    bundle = load_dataset("imagefolder", data_dir=root, image_size=16)
    assert len(bundle.train) + len(bundle.val) == 24  # torchvision's listing gave 984
    said: list[str] = []
    exp = load_experiment(experiment(tmp_path, data_dir=str(root), val_fraction=0.25))
    preflight.check_sweep(exp, None, str(tmp_path / "r"), "s", say=said.append)
    assert len(said) == 1 and "4 symbolic links not followed" in said[0], said


def test_too_few_validation_images_for_the_label_free_metrics_exit_2(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """24 images at val_fraction 0.1 hold out 2: α-ReQ needs 3 (the trial died on it)."""
    write_folder(tmp_path / "photos", per_class=12)
    refused([*SWEEP, "--experiment", str(experiment(tmp_path)), "--data-dir", "photos"], capsys,
            "2 validation images at val_fraction 0.1", "trial.label_free")

# ----------------------------------------------------------------------------- sizes, places


@pytest.mark.parametrize("where, field, value", [
    ("experiment", "image_size", 60000), ("space", "image_size", 60000),
    ("experiment", "max_train_samples", -5), ("space", "max_train_samples", -5)])
def test_sizes_that_cannot_fit_exit_2(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                      where: str, field: str, value: int) -> None:
    write_folder(tmp_path / "photos")
    exp = experiment(tmp_path, **({field: value} if where == "experiment" else {}))
    space = tmp_path / "space.yaml"
    space.write_text("method: simclr\n" + (f"trial:\n  {field}: {{choice: [16, {value}]}}\n"
                                           if where == "space" else ""))
    line = refused(["--space", str(space), "--storage", "results", "--experiment", str(exp),
                    "--data-dir", "photos"], capsys, f"trial.{field}", str(value))
    assert str(space if where == "space" else exp) in line
    if field == "image_size":
        assert "GB of memory per trial" in line


@pytest.mark.parametrize("case", ["fashion_dev_zero", "space_dev_zero", "storage_file",
                                  "zero_cpus"])
def test_not_a_data_set_a_file_as_storage_and_no_resources_exit_2(
        tmp_path: Path, capsys: pytest.CaptureFixture[str], case: str) -> None:
    args = [*SWEEP]
    names = ["/dev/zero", "not a"]
    if case == "fashion_dev_zero":
        args += ["--experiment", str(experiment(tmp_path, dataset="fashion_mnist",
                                                data_dir="/dev/zero", image_size=None))]
    elif case == "space_dev_zero":
        space = tmp_path / "space.yaml"
        space.write_text("method: simclr\ntrial:\n  dataset: fashion_mnist\n"
                         "  data_dir: /dev/zero\n")
        args[1] = str(space)
    elif case == "storage_file":
        (tmp_path / "taken").write_text("a file")
        args = ["--space", "simclr", "--storage", "taken"]
        names = [f"--storage {tmp_path / 'taken'}", "is a file, not a folder"]
    else:
        args += ["--cpus-per-trial", "0"]
        names = ["cpus_per_trial = 0 with gpus_per_trial = 0"]
    refused(args, capsys, *names)

# ----------------------------------------------------------------------------- one driver


HOLDER = """
import sys, time
from pathlib import Path
from sslsearch.search import sweepdir
sweepdir.lock(Path(sys.argv[1]), "k")
print("locked", flush=True)
time.sleep(120)
"""


def test_a_second_driver_on_a_running_sweep_exits_2_naming_it(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """A driver (here a stand-in holding the sweep's lock) runs sweep k: a second sweep named k,
    and a --resume of k, are refused naming its pid; once it is gone its lock is taken over."""
    from sslsearch.search.sweep import space_digest, write_sweep_file

    folder = tmp_path / "results" / "k"
    space = load_space("simclr").source
    write_sweep_file(folder, {
        "space_path": space, "space_digest": space_digest(Path(space).read_text()),
        "experiment_path": str(load_experiment().source),
        "tracking_uri": f"sqlite:///{tmp_path / 'mlflow.db'}", "mlflow_experiment": "sslsearch",
        "overrides": {}})
    (folder / "tuner.pkl").write_bytes(b"")
    holder = subprocess.Popen([sys.executable, "-c", HOLDER, str(folder)], stdout=subprocess.PIPE,
                              text=True)
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "locked"
        for args in (["--name", "k", *SWEEP], ["--resume", "k", "--storage", "results"]):
            refused(args, capsys, "sweep k is already running", f"pid {holder.pid} on")
    finally:
        holder.kill()
        holder.wait()
    sweepdir.lock(folder, "k")  # the dead driver's lock, taken over
    try:
        assert f"took over the lock left by pid {holder.pid}" in capsys.readouterr().err
    finally:
        sweepdir.release_all()
    assert (folder / sweepdir.LOCK_FILE).read_text() == ""


def test_the_orphans_of_a_kill_before_tunes_first_save_are_ended_on_resume(
        tmp_path: Path) -> None:
    """What the first start left (a RUNNING child, a finished one, their trial folders) is
    ended when the resumed sweep starts over: closed KILLED and lost, soft-deleted, removed."""
    from mlflow.tracking import MlflowClient

    from sslsearch.search.tracking import Tracker

    uri, folder = f"sqlite:///{tmp_path / 'mlflow.db'}", tmp_path / "results" / "k"
    tracker = Tracker(uri, "sslsearch", "k")
    running = tracker.child("t1", "simclr-t1", {"base_lr": 0.1})
    finished = tracker.child("t2", "simclr-t2", {"base_lr": 0.2})
    tracker.finish_child(finished, "FINISHED", {"trial_status": "completed"})
    for name in ("simclr_t1", "simclr_t2"):
        (folder / name).mkdir(parents=True)
        (folder / name / "params.json").write_text("{}")
    (folder / "best_encoder").mkdir()  # not a trial's: kept
    sweepdir.start_over(folder, "k", lambda: Tracker(uri, "sslsearch", "k").forget_trials())
    assert sorted(p.name for p in folder.iterdir()) == ["best_encoder"]
    client = MlflowClient(tracking_uri=uri)
    for run_id, status in ((running, "KILLED"), (finished, "FINISHED")):
        run = client.get_run(run_id)
        assert run.info.status == status and run.info.lifecycle_stage == "deleted"
        assert run.data.tags["trial_status"] == "lost"


def test_the_preflight_imports_no_ray_optuna_or_mlflow() -> None:
    code = ("import sys, sslsearch.search.preflight, sslsearch.search.sweepdir\n"
            "print(','.join(m for m in ('ray', 'optuna', 'mlflow') if m in sys.modules))\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == ""


def test_a_storage_folder_that_cannot_be_made_or_written_is_refused(tmp_path: Path) -> None:
    (tmp_path / "file").write_text("x")
    with pytest.raises(ConfigError, match="is a file, so no folder can be made under it"):
        preflight.check_storage(str(tmp_path / "file" / "results"), "s")
    with pytest.raises(ConfigError, match="is a folder; name the SQLite file"):
        preflight.check_tracking_file(f"sqlite:///{tmp_path}")
    if os.geteuid() != 0:  # root writes anywhere
        (tmp_path / "ro").mkdir(mode=0o500)
        with pytest.raises(ConfigError, match="not writable"):
            preflight.check_storage(str(tmp_path / "ro" / "results"), "s")

# ----------------------------------------------------------------------------- slow: two drivers


def _sweep(cwd: Path, *args: str) -> subprocess.Popen[str]:
    return subprocess.Popen([sys.executable, "-m", "sslsearch.run", "--space", "simclr",
                             "--experiment", "quick", "--num-samples", "2", "--epochs", "2",
                             "--grace-period", "2", "--max-concurrent", "1", "--storage",
                             "results", "--quiet", "--no-confirm", *args],
                            cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _runs_by_sweep(uri: str) -> dict[str, list[Any]]:
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=uri)
    found: dict[str, list[Any]] = {}
    experiment_id = client.get_experiment_by_name("sslsearch").experiment_id
    for run in client.search_runs([experiment_id], max_results=1000):
        found.setdefault(run.data.tags["sslsearch.sweep_id"], []).append(run)
    return found


@pytest.mark.slow
def test_two_sweeps_on_one_new_sqlite_store_both_finish_with_every_run(tmp_path: Path) -> None:
    """Started together on a store that does not exist yet (before, one died creating its
    tables: "table _alembic_tmp_experiments already exists"): both finish, one run per trial
    and one parent each, none left RUNNING."""
    procs = [_sweep(tmp_path, "--name", name, "--tracking-uri", "shared.db") for name in "AB"]
    outs = [p.communicate(timeout=600) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], [o[1][-2000:] for o in outs]
    runs = _runs_by_sweep(f"sqlite:///{tmp_path / 'shared.db'}")
    assert sorted(runs) == ["A", "B"]
    for sweep_runs in runs.values():
        roles = sorted(r.data.tags["sslsearch.role"] for r in sweep_runs)
        assert roles == ["parent", "trial", "trial"], roles
        assert all(r.info.status == "FINISHED" for r in sweep_runs)


@pytest.mark.slow
def test_a_second_resume_while_the_first_driver_runs_is_refused(tmp_path: Path) -> None:
    first = _sweep(tmp_path, "--name", "k")
    lock, folder = tmp_path / "results" / "k" / sweepdir.LOCK_FILE, tmp_path / "results" / "k"
    deadline = time.time() + 300
    while not ((folder / "tuner.pkl").is_file() and lock.is_file() and lock.read_text()):
        assert first.poll() is None and time.time() < deadline, first.communicate()
        time.sleep(0.2)
    for args in (["--resume", "k"], ["--space", "simclr", "--name", "k"]):
        second = subprocess.run([sys.executable, "-m", "sslsearch.run", *args, "--storage",
                                 "results"], cwd=tmp_path, capture_output=True, text=True,
                                timeout=120)
        assert second.returncode == 2, second.stderr
        assert second.stderr.count("\n") == 1 and f"pid {first.pid} on" in second.stderr
    _, err = first.communicate(timeout=600)
    assert first.returncode == 0, err[-3000:]
    (runs,) = _runs_by_sweep(f"sqlite:///{tmp_path / 'mlflow.db'}").values()
    assert sorted(r.data.tags["sslsearch.role"] for r in runs) == ["parent", "trial", "trial"]
    assert all(r.info.status == "FINISHED" for r in runs)


# Kills the driver when its first trial starts, after deleting Tune's saved state: the folder
# then is what a kill just before Tune's first save leaves (a trial folder, a RUNNING MLflow
# child, no experiment state). A marker keeps the restored (pickled) callback from killing again.
EARLY_KILLER = """
import os, signal, sys
from pathlib import Path
import sslsearch.search.sweep as sweep
from sslsearch.run import main

class KillAtStart(sweep.Progress):
    def on_trial_start(self, iteration, trials, trial, **info):
        marker = Path("killed.marker")
        if not marker.exists():
            marker.write_text(trial.trial_id)
            for state in Path("results/k").glob("experiment_state-*.json"):
                state.unlink()
            os.kill(os.getpid(), signal.SIGKILL)
        super().on_trial_start(iteration, trials, trial, **info)

sweep.Progress = KillAtStart
sys.exit(main(sys.argv[1:]))
"""


@pytest.mark.slow
def test_a_driver_killed_before_tunes_first_save_resumes_with_its_orphans_ended(
        tmp_path: Path) -> None:
    import contextlib
    import signal

    from sslsearch.search.sweep import has_tune_state

    script = tmp_path / "killer.py"
    script.write_text(EARLY_KILLER)
    args = ["--space", "simclr", "--experiment", "quick", "--num-samples", "2", "--epochs", "2",
            "--grace-period", "2", "--max-concurrent", "1", "--name", "k", "--storage", "results",
            "--quiet", "--no-confirm"]
    first = subprocess.Popen([sys.executable, str(script), *args], cwd=tmp_path,
                             stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                             start_new_session=True)
    try:
        first.communicate(timeout=600)
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(first.pid, signal.SIGKILL)  # its Ray processes, as a lost machine's
    folder = tmp_path / "results" / "k"
    orphan = next(folder.glob("simclr_*"))  # empty: the trial had not written yet
    assert first.returncode == -9 and not has_tune_state(folder)
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    (before,) = _runs_by_sweep(uri).values()
    assert [r.info.status for r in before if r.data.tags["sslsearch.role"] == "trial"] == [
        "RUNNING"]
    again = subprocess.run([sys.executable, str(script), "--resume", "k", "--storage", "results",
                            "--quiet"], cwd=tmp_path, capture_output=True, text=True,
                           timeout=600)
    assert again.returncode == 0, again.stdout[-3000:] + again.stderr[-3000:]
    assert "ended 1 MLflow trial run and removed 1 trial folder" in again.stdout
    assert not orphan.exists()
    (runs,) = _runs_by_sweep(uri).values()  # deleted runs are not listed
    assert sorted(r.data.tags["sslsearch.role"] for r in runs) == ["parent", "trial", "trial"]
    assert all(r.info.status == "FINISHED" for r in runs)
