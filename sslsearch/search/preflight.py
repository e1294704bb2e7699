"""The pre-flight: what a sweep can check before Ray starts and before its MLflow run exists.

``python -m sslsearch.run`` (a sweep and ``--compare``) and ``python -m sslsearch.bench search``
call :func:`check_sweep` once their flags and files are read. It looks at every dataset a trial of
the search space can be given (each value or bound the space can draw for the data fields, crossed
with the others), through :mod:`sslsearch.data.survey`: the folder is a dataset, its files are
images (headers and tails, nothing decoded), its classes can make a classification task under
every split the space can draw, and a batch at the largest image size fits in this machine's
memory; and it looks at the places the sweep writes to (``--storage`` and the sweep's folder, the
SQLite tracking file). Bad input raises :class:`~sslsearch.errors.ConfigError` (exit 2, one line).

Files no trial could decode are refused, the first one named and the others counted, all of
them listed in ``bad_images.txt`` in the sweep's folder; with ``--skip-bad-images``
(``trial.skip_bad_images``) they are left out with one warning line, the trials' loaders leave the
same files out (they run the same checks), and the driver records them on the sweep's MLflow run
(:attr:`Checked.params`, :attr:`Checked.texts`).

Earlier still, as the flags are applied (:meth:`sslsearch.cli.Overrides.apply`),
:func:`check_labels` looks at an ImageFolder's labels: one without class folders runs unlabeled,
and a search metric that needs labels is refused.

No Ray, Optuna or MLflow here: it runs before any of them starts.
"""

from __future__ import annotations

import dataclasses
import itertools
import os
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from sslsearch import methods as registry
from sslsearch.config import Experiment, check_objective
from sslsearch.data import MAX_RESIDENT_BYTES
from sslsearch.data.imagefiles import BAD_IMAGES_FILE, bad_images_text, refuse_bad
from sslsearch.data.imagefolder import unlabeled_folder
from sslsearch.data.survey import (
    Shape,
    check_splits,
    dataset_shape,
    memory_need,
    physical_memory,
)
from sslsearch.errors import ConfigError
from sslsearch.search.distributions import Dist
from sslsearch.search.space import SearchSpace
from sslsearch.search.sweepdir import is_remote
from sslsearch.trial.labelfree import MIN_SAMPLES

# The trial fields that decide what a trial loads and how much memory its data takes.
DATA_FIELDS = ("dataset", "data_dir", "download", "labels", "val_fraction", "max_train_samples",
               "image_size", "batch_size", "skip_bad_images", "label_free")
# What the label-free metrics (RankMe, α-ReQ on the validation images, each epoch) need.
LABEL_FREE_NEEDS = (MIN_SAMPLES, "trial.label_free (RankMe and α-ReQ of the validation images)")
SKIP_FLAG = "--skip-bad-images"
_UNSET = object()  # a field the space does not set


@dataclasses.dataclass(frozen=True)
class Checked:
    """What the pre-flight found that the sweep goes on with: the bad images it leaves out."""

    skipped: tuple[tuple[Path, str], ...] = ()
    list_file: Path | None = None  # where they are listed
    seconds: float = 0.0

    @property
    def params(self) -> dict[str, Any]:
        """For the sweep's MLflow run: how many images were left out (none: nothing)."""
        return {"skipped_bad_images": len(self.skipped)} if self.skipped else {}

    @property
    def texts(self) -> dict[str, str]:
        """For the sweep's MLflow run: the list of the images left out, as an artifact."""
        return {BAD_IMAGES_FILE: bad_images_text(list(self.skipped))} if self.skipped else {}


def check_sweep(exp: Experiment, space: SearchSpace | None, storage: str, name: str,
                tracking_uri: str | None = None, say: Callable[[str], None] | None = None,
                make_folder: bool = False, skip_hint: str = SKIP_FLAG,
                methods: Sequence[str] | None = None) -> Checked:
    """Check everything a sweep named ``name`` under ``storage`` will read and write; see the
    module docstring. ``say`` prints the warning lines (default: stderr); ``make_folder``: the
    sweep's folder is made once everything passed; ``skip_hint``: how the command skips bad
    images, for the refusal's message; ``methods``: those it runs (default: the space's)."""
    t0 = time.perf_counter()
    names = methods or (space.method_names if space is not None else [exp.trial.method])
    registry.check_labels_kept(names, exp.trial.labels, exp.source)
    warn = say or (lambda line: print(line, file=sys.stderr, flush=True))
    check_storage(storage, name)
    if tracking_uri is not None:
        check_tracking_file(tracking_uri)
    results = Path(storage) / name if "://" not in storage else Path.cwd()
    list_name = BAD_IMAGES_FILE if "://" not in storage else f"{name}-{BAD_IMAGES_FILE}"
    shapes: dict[tuple[str, str | None, bool], Shape | None] = {}
    skipped: dict[Path, str] = {}
    for cfg in data_configs(exp, space):
        key = (cfg["dataset"], _data_dir(cfg["data_dir"], space), bool(cfg["download"]))
        if key not in shapes:
            shapes[key] = shape = dataset_shape(*key)
            if shape is not None and shape.skipped_links:
                warn(_links_line(shape))
        shape = shapes[key]
        if shape is None:
            continue
        if shape.bad and not cfg["skip_bad_images"]:
            raise refuse_bad(list(shape.bad), _write_list(results / list_name, shape.bad),
                             skip_hint)
        skipped.update(shape.bad)
        check_splits(shape, cfg["labels"], cfg["val_fraction"], cfg["max_train_samples"],
                     LABEL_FREE_NEEDS if cfg["label_free"] else (1, ""))
        check_memory(shape, cfg, exp, space)
    probe = _probe_shape(exp.trial.probe_data_dir, exp.trial.skip_bad_images, results / list_name,
                         skip_hint)
    if probe is not None:
        skipped.update(probe.bad)
        check_splits(probe, True, exp.trial.val_fraction, None)
    bad = tuple(skipped.items())
    list_file = _write_list(results / list_name, bad) if bad else None
    if not bad:
        (results / list_name).unlink(missing_ok=True)  # an earlier refusal's list, now stale
    if make_folder and "://" not in storage:
        results.mkdir(parents=True, exist_ok=True)
    if bad:
        warn(f"warning: {SKIP_FLAG}: leaving out {len(bad)} bad image"
             f"{'s' if len(bad) > 1 else ''} (first: {bad[0][0]}: {bad[0][1]}); all listed in "
             f"{list_file}")
    return Checked(bad, list_file, time.perf_counter() - t0)


def recorded(folder: Path) -> Checked:
    """What :func:`check_sweep` left out for the sweep in ``folder``, read back from its list."""
    path = folder / BAD_IMAGES_FILE
    if not path.is_file():
        return Checked()
    lines = [line.split("\t", 1) for line in path.read_text().splitlines() if "\t" in line]
    return Checked(tuple((Path(p), why) for p, why in lines), path)


def data_configs(exp: Experiment, space: SearchSpace | None) -> list[dict[str, Any]]:
    """Every combination of the values the space can give the data fields: each choice, each
    bound of a range (the extremes are where a split runs empty or memory runs out), the
    space's constants, else the experiment's values."""
    options: list[list[Any]] = []
    for key in DATA_FIELDS:
        spec = space.trial.get(key, _UNSET) if space is not None else _UNSET
        if isinstance(spec, Dist):
            options.append(spec.corners())
        else:
            options.append([getattr(exp.trial, key) if spec is _UNSET else spec])
    return [dict(zip(DATA_FIELDS, combo, strict=True)) for combo in itertools.product(*options)]


def _data_dir(value: Any, space: SearchSpace | None) -> str | None:
    """A data folder as the trials will see it: absolute (each trial runs in its own folder)."""
    if value is None:
        return None
    path = Path(str(value)).expanduser()
    if not path.is_absolute():
        where = space.source if space is not None else "data_dir"
        raise ConfigError(f"{where}: trial.data_dir {value!r} is relative; trials run in their "
                          "own folders, give an absolute path")
    return str(path)


def _probe_shape(probe_dir: str | None, skip: bool, list_file: Path, hint: str) -> Shape | None:
    if probe_dir is None:
        return None
    shape = dataset_shape("imagefolder", probe_dir, False)
    if shape is not None and shape.bad and not skip:
        raise refuse_bad(list(shape.bad), _write_list(list_file, shape.bad), hint)
    return shape


def check_memory(shape: Shape, cfg: Mapping[str, Any], exp: Experiment,
                 space: SearchSpace | None) -> None:
    """Refuse a data setting that cannot fit in this machine's memory (a lower bound on what a
    trial holds: :func:`sslsearch.data.survey.memory_need`)."""
    need, what = memory_need(shape, cfg["image_size"], cfg["batch_size"], MAX_RESIDENT_BYTES)
    have = physical_memory()
    if not have or need <= have:
        return
    field = "image_size" if cfg["image_size"] is not None else "batch_size"
    drawn = space is not None and field in space.trial
    source = space.source if drawn and space is not None else exp.source
    raise ConfigError(f"{source}: trial.{field} = {cfg[field]!r} on {shape.where} needs at least "
                      f"{need / 1e9:,.1f} GB of memory per trial ({what}); this machine has "
                      f"{have / 1e9:,.1f} GB: lower image_size or batch_size")


def check_storage(storage: str, name: str) -> None:
    """``--storage`` must be (or become) a writable folder, and the sweep's folder in it too."""
    if is_remote(storage):
        return  # remote storage (s3://...): Ray checks it
    root = Path(storage)
    for path in (root, root / name):
        if path.exists() and not path.is_dir():
            raise ConfigError(f"--storage {storage}: {path} is a file, not a folder; give a "
                              "folder for the results (created when absent)")
    existing = root
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    if not existing.is_dir():
        raise ConfigError(f"--storage {storage}: {existing} is a file, so no folder can be "
                          "made under it")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise ConfigError(f"--storage {storage}: {existing} is not writable by this user")


def check_tracking_file(uri: str) -> None:
    """A SQLite tracking URI must name a file (not a folder) in a writable, existing folder."""
    if not uri.startswith("sqlite:///"):
        return
    path = Path(uri.removeprefix("sqlite:///"))
    if path.is_dir():
        raise ConfigError(f"--tracking-uri {uri}: {path} is a folder; name the SQLite file")
    if not path.parent.is_dir():
        raise ConfigError(f"--tracking-uri {uri}: the folder {path.parent} does not exist")
    if not os.access(path if path.exists() else path.parent, os.W_OK):
        raise ConfigError(f"--tracking-uri {uri}: {path if path.exists() else path.parent} is "
                          "not writable by this user")


def _links_line(shape: Shape) -> str:
    n = len(shape.skipped_links)
    return (f"warning: data_dir {shape.where}: {n} symbolic link{'s' if n > 1 else ''} not "
            f"followed (out of their split folder, or back into a folder or file already "
            f"listed; first: {shape.skipped_links[0]})")


def _write_list(path: Path, bad: tuple[tuple[Path, str], ...]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(bad_images_text(list(bad)))
    return path


def check_labels(exp: Experiment) -> Experiment:
    """An ImageFolder without class folders has no labels: the experiment then runs with
    ``labels: false``, and a search metric that needs labels is refused now, before any trial
    starts (one line naming the folder and the field). A ``probe_data_dir`` must be a labeled
    ImageFolder (made absolute: trials chdir into their own folders)."""
    trial = exp.trial
    if trial.probe_data_dir is not None:
        probe_dir = Path(trial.probe_data_dir).expanduser().resolve()
        if (not (probe_dir / "train").is_dir() or not (probe_dir / "test").is_dir()
                or unlabeled_folder(probe_dir) is not None):
            raise ConfigError(f"{exp.source}: trial.probe_data_dir {trial.probe_data_dir}: "
                              "expected a labeled ImageFolder, train/<class>/* and "
                              "test/<class>/*")
        trial = dataclasses.replace(trial, probe_data_dir=str(probe_dir))
        exp = dataclasses.replace(exp, trial=trial)
    if trial.dataset != "imagefolder" or trial.data_dir is None or not trial.labels:
        return exp
    folder = unlabeled_folder(Path(trial.data_dir))
    if folder is None:
        return exp
    trial = dataclasses.replace(trial, labels=False)
    check_objective(trial, exp.search,
                    source=f"{exp.source}: {folder} has no class folders (unlabeled images)")
    return dataclasses.replace(exp, trial=trial)
