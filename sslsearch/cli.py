"""The command line of ``python -m sslsearch.run``: its flags, and how they change an experiment.

The flags are parsed here and applied by :meth:`Overrides.apply`, which also makes a data folder
absolute and checks that it exists, and has the pre-flight check an ImageFolder's labels
(:func:`sslsearch.search.preflight.check_labels`); nothing else here reads a file. The drivers
(:mod:`sslsearch.run` for a sweep, :mod:`sslsearch.compare` for ``--compare``) take the parsed
flags from here, so neither imports the other.
"""

from __future__ import annotations

import argparse
import dataclasses
import math
from pathlib import Path
from typing import Any

from sslsearch.config import DEFAULT_EXPERIMENT, Experiment, SearchConfig, check_objective
from sslsearch.errors import ConfigError, OneLineParser
from sslsearch.schema import build_dataclass
from sslsearch.search.sweepdir import is_remote

DEFAULT_STORAGE = "sslsearch_results"


def positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number ≥ 1, found {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a whole number ≥ 1, found {text!r}")
    return value


def _nonneg_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number ≥ 0, found {text!r}") from None
    if not math.isfinite(value) or value < 0:
        raise argparse.ArgumentTypeError(f"expected a number ≥ 0, found {text!r}")
    return value


def build_parser() -> argparse.ArgumentParser:
    """The flags, each with its default said once, in words (no "(default: None)")."""
    p = OneLineParser(
        prog="python -m sslsearch.run",
        description="Search SSL methods and their hyperparameters (Ray Tune + Optuna TPE + ASHA), "
                    "logging every trial to MLflow.")
    p.add_argument("--space", metavar="YAML",
                   help="search space: a path, or a name under search_spaces/ (e.g. vicreg.yaml, "
                        "all_methods); required unless --resume")
    p.add_argument("--experiment", default=DEFAULT_EXPERIMENT, metavar="YAML",
                   help="experiment (the fixed setup): a path, or a name under experiments/; "
                        f"default: {DEFAULT_EXPERIMENT} (the embedded Fashion-MNIST subset)")
    p.add_argument("--num-samples", type=positive_int, metavar="N",
                   help="trials to run; default: the experiment's search.num_samples")
    p.add_argument("--max-concurrent", type=positive_int, metavar="N",
                   help="trials running at once; default: the experiment's")
    p.add_argument("--epochs", type=positive_int, metavar="N",
                   help="pretraining epochs per trial; default: the experiment's")
    p.add_argument("--seed", type=int, default=0,
                   help="seed of the TPE sampler and of every trial; default: 0")
    p.add_argument("--tracking-uri", metavar="URI",
                   help="MLflow tracking URI: sqlite:///PATH, http://HOST:PORT (a server), ...; "
                        "default: sqlite:///<working directory>/mlflow.db")
    p.add_argument("--mlflow-experiment", default="sslsearch", metavar="NAME",
                   help="the MLflow experiment the sweep's runs go to; default: sslsearch")
    p.add_argument("--storage", default=DEFAULT_STORAGE, metavar="FOLDER",
                   help="folder (or s3://... URI) for the results, trial checkpoints and sweep "
                        "state; shared storage (NFS/S3) on a multi-node cluster; default: "
                        f"{DEFAULT_STORAGE}")
    p.add_argument("--name", help="sweep name, a folder under --storage; default: "
                                  "<space>-<time>-<random>")
    p.add_argument("--resume", nargs="?", const="", metavar="NAME_OR_PATH",
                   help="continue an interrupted sweep: its folder, its name under --storage, "
                        "or nothing for the newest sweep there")
    p.add_argument("--sync-tracking", metavar="NAME_OR_PATH",
                   help="replay what a sweep could not log while its MLflow server was away "
                        "(its tracking_outbox.jsonl): the sweep's folder, its name under "
                        "--storage, or the file")
    p.add_argument("--address",
                   help="an existing Ray cluster: auto or ray://HOST:PORT; default: "
                        "$RAY_ADDRESS, else a new local Ray on 127.0.0.1")
    p.add_argument("--grace-period", type=positive_int, metavar="EPOCHS",
                   help="epochs before ASHA may stop a trial; default: the experiment's")
    p.add_argument("--cpus-per-trial", type=_nonneg_float, metavar="N",
                   help="CPUs reserved per trial (per worker with --workers-per-trial); default: "
                        "the experiment's")
    p.add_argument("--gpus-per-trial", type=_nonneg_float, metavar="N",
                   help="GPUs per trial (per worker with --workers-per-trial); fractions pack "
                        "trials on one GPU, e.g. 0.25; default: the experiment's")
    p.add_argument("--workers-per-trial", type=positive_int, metavar="N",
                   help="data-parallel workers per trial (Ray Train; docs/workers.md); default: "
                        "the experiment's, else 1")
    p.add_argument("--data-dir", metavar="FOLDER",
                   help="the dataset's folder; default: the experiment's")
    p.add_argument("--skip-bad-images", action="store_true",
                   help="leave out images no trial could decode (empty, truncated, bombs) instead "
                        "of refusing the sweep; they are listed in bad_images.txt and in MLflow")
    p.add_argument("--quiet", action="store_true", help="no per-epoch progress lines")
    _selection_flags(p)
    return p


def _selection_flags(p: argparse.ArgumentParser) -> None:
    """How the answer is chosen: confirmation on fresh seeds, and the method comparison."""
    p.add_argument("--confirm-top", type=positive_int, metavar="K",
                   help="after the search, re-run its K best configurations (and the "
                        "experiment's own) on fresh seeds; default: the experiment's "
                        "search.confirm_top, else 2")
    p.add_argument("--confirm-seeds", type=positive_int, metavar="N",
                   help="fresh seeds of the confirmation; default: the experiment's "
                        "search.confirm_seeds, else 3")
    p.add_argument("--no-confirm", dest="confirm", action="store_const", const=False,
                   help="no confirmation: the answer is the best trial at the search's seed")
    p.add_argument("--compare", action="store_true",
                   help="compare the space's methods: a search of --num-samples trials per "
                        "method, each method's top configurations confirmed on the same fresh "
                        "seeds; writes comparison.md/.json and a report")
    p.add_argument("--methods", metavar="M1,M2",
                   help="--compare: a comma-separated subset of the space's methods; default: "
                        "all of them")


@dataclasses.dataclass(frozen=True)
class Overrides:
    """What the command line changes in an experiment: built once from the flags, saved in the
    sweep file, and rebuilt from there by ``--resume`` (so a resumed sweep runs as it started,
    whatever flags resume it). None keeps the experiment's value."""

    num_samples: int | None = None
    max_concurrent: int | None = None
    grace_period: int | None = None
    cpus_per_trial: float | None = None
    gpus_per_trial: float | None = None
    workers_per_trial: int | None = None
    epochs: int | None = None
    seed: int = 0
    data_dir: str | None = None
    confirm: bool | None = None
    confirm_top: int | None = None
    confirm_seeds: int | None = None
    skip_bad_images: bool = False

    @classmethod
    def from_args(cls, args: argparse.Namespace) -> Overrides:
        return cls(**{f.name: getattr(args, f.name) for f in dataclasses.fields(cls)})

    @classmethod
    def saved(cls, doc: Any, source: str) -> Overrides:
        """The overrides a sweep file recorded (checked like any other input)."""
        return build_dataclass(cls, doc, source=source, where="overrides")

    def apply(self, exp: Experiment) -> Experiment:
        """``exp`` with these overrides; a data folder made absolute (trials chdir into their own
        folders) and checked to exist, and its labels checked
        (:func:`sslsearch.search.preflight.check_labels`)."""
        # Imported here: the pre-flight loads torch (through the data loaders); the flags and
        # --help do not need it.
        from sslsearch.search.preflight import check_labels

        search = dict(dataclasses.asdict(exp.search))
        for key in ("num_samples", "max_concurrent", "grace_period", "cpus_per_trial",
                    "gpus_per_trial", "workers_per_trial", "confirm", "confirm_top",
                    "confirm_seeds"):
            if getattr(self, key) is not None:
                search[key] = getattr(self, key)
        search_cfg = build_dataclass(SearchConfig, search, source="command line", where="search")
        trial = exp.trial
        changes: dict[str, Any] = {"seed": self.seed}
        if self.skip_bad_images:
            changes["skip_bad_images"] = True
        if self.epochs is not None:
            changes["epochs"] = self.epochs
            changes["warmup_epochs"] = min(trial.warmup_epochs, float(self.epochs))
        data_dir = self.data_dir if self.data_dir is not None else trial.data_dir
        if data_dir is not None:
            path = Path(data_dir).expanduser().resolve()
            if not path.is_dir():
                raise ConfigError(f"data_dir {data_dir!r}: " + (
                    "not a folder (a file or a device)" if path.exists() else "no such folder"))
            changes["data_dir"] = str(path)
        exp = dataclasses.replace(exp, trial=dataclasses.replace(trial, **changes),
                                  search=search_cfg)
        check_objective(exp.trial, exp.search, source=f"{exp.source} with the command line's flags")
        return check_labels(exp)


def storage_location(text: str) -> str:
    if is_remote(text):
        return text.rstrip("/")
    return str(Path(text).expanduser().resolve())


def find_resume_folder(args: argparse.Namespace, storage: str) -> Path:
    if is_remote(storage):
        raise ConfigError("--resume with a remote --storage needs a local path to the sweep")
    if args.resume:
        given = Path(args.resume).expanduser()
        if given.is_dir():
            return given.resolve()
        return Path(storage) / str(args.resume)
    candidates = sorted(Path(storage).glob("*/sslsearch_sweep.json"),
                        key=lambda p: p.stat().st_mtime)
    if not candidates:
        raise ConfigError(f"--resume: no sweep found under {storage}")
    folder: Path = candidates[-1].parent
    return folder
