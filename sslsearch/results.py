"""How trials ended and what they are worth: the one owner of a trial's status, of the budget a
sweep spent, of the baselines every accuracy is reported against, and of the sweep's summary table.

Light on purpose (no torch, Ray or Optuna import): the command line, the sweep's callbacks, MLflow
tracking, ``--compare`` and the bench all read results through it, so "finished / stopped early /
failed" means the same in the summary, in MLflow and in the comparison.
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
import statistics
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

from sslsearch.config import LABEL_FREE_OBJECTIVES


def fmt(v: Any) -> str:
    """A value for a Markdown table: floats to 4 significant digits."""
    if isinstance(v, float):
        return f"{v:.4g}"
    return str(v)


FINISHED = "finished"
STOPPED_EARLY = "stopped early"
ERROR = "error"  # the status of a trial Ray gave up on (its error file says why)
FAILED_PREFIXES = ("failed", "error")  # a TrialRecord's status: "failed: <reason>" or "error"


def is_failed(status: str) -> bool:
    """A record's status says it failed (a failure reason, or an error Ray gave up on)."""
    return status.startswith(FAILED_PREFIXES)


def number(v: Any) -> float | None:
    """``v`` as a float when it is a finite number (not a bool), else None."""
    if isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v):
        return float(v)
    return None


def configured_epochs(config: Mapping[str, Any]) -> int | None:
    """The epochs a trial was configured to train: a searched ``epochs`` over the experiment's
    (``_base``); None when the config says neither (a hand-built one)."""
    base = config.get("_base")
    value = config.get("epochs", base.get("epochs") if isinstance(base, Mapping) else None)
    return int(value) if number(value) is not None else None


def trial_status(last: Mapping[str, Any], config: Mapping[str, Any]) -> str:
    """How a trial ended, from its last result and its config.

    - its ``failure_reason`` (``nan_loss``, ``oom``, ``collapsed``) when it failed;
    - ``finished`` when it trained every configured epoch (``epoch == configured epochs``), with a
      linear probe or without one (``probe: false``);
    - ``stopped early`` when it ended before: ASHA stopped it (or it was cut short otherwise).

    A config that does not say its epochs (results built by hand) falls back to the probe: a
    result with ``probe_val_acc`` is finished.
    """
    if last.get("failure_reason"):
        return str(last["failure_reason"])
    planned = configured_epochs(config)
    if planned is None:
        return FINISHED if "probe_val_acc" in last else STOPPED_EARLY
    epoch = last.get("epoch")
    done = int(epoch) if isinstance(epoch, int | float) and number(epoch) is not None else 0
    return FINISHED if done >= planned else STOPPED_EARLY


# The baselines every accuracy is reported against (computed by ``sslsearch.trial.baselines`` and
# ``sslsearch.train``, which take these names from here): each accuracy's raw-pixel counterpart
# on the same split, and the trial's own encoder at random initialisation.
RAW_VS = {"val_knn_acc": "raw_knn_acc", "test_knn_acc": "raw_test_knn_acc",
          "probe_val_acc": "raw_probe_acc", "probe_test_acc": "raw_probe_test_acc"}
RAW_KEYS = tuple(RAW_VS.values())
INIT_KEY = "init_knn_acc"
BASELINE_KEYS = (*RAW_KEYS, INIT_KEY)


def baselines_of(metrics: Any) -> dict[str, float]:
    """The baseline accuracies a trial's result carries (none in results that predate them)."""
    out = {}
    for key in BASELINE_KEYS:
        v = number((metrics or {}).get(key))
        if v is not None:
            out[key] = v
    return out


def delta_points(value: Any, base: Any) -> float | None:
    """``value − base`` in percentage points; None unless both are finite numbers."""
    v, b = number(value), number(base)
    return None if v is None or b is None else (v - b) * 100.0


def fmt_delta(points: float | None, digits: int = 1) -> str:
    """A signed difference in points: ``+1.3``, ``−2.0`` (a true minus sign), ``±0.0``;
    ``n/a`` when there is nothing to compare."""
    if points is None:
        return "n/a"
    text = f"{points:+.{digits}f}"
    if float(text) == 0.0:
        return f"±{0.0:.{digits}f}"
    return text.replace("-", "−")


def value_range(values: Any, fmt: Any = fmt) -> str:
    """One value, ``lo–hi`` when they differ, ``n/a`` when there are none."""
    vals = sorted({v for v in (number(x) for x in values) if v is not None})
    if not vals:
        return "n/a"
    lo, hi = fmt(vals[0]), fmt(vals[-1])
    return lo if lo == hi else f"{lo}–{hi}"


def baseline_line(rows: list[dict[str, Any]]) -> str:
    """The line above the summary's tables: the split's raw-pixel baselines and the range of the
    trials' random-init kNN accuracies."""
    def values(key: str) -> list[float]:
        return [r["baselines"][key] for r in rows if key in r.get("baselines", {})]

    if not any(r.get("baselines") for r in rows):
        return ("**Baselines**: n/a (these results carry no raw-pixel or random-init "
                "baseline: they predate them).\n")
    return (f"**Baselines on this split**: raw pixels (standardised) val kNN "
            f"{value_range(values('raw_knn_acc'))}, linear probe val "
            f"{value_range(values('raw_probe_acc'))} / test "
            f"{value_range(values('raw_probe_test_acc'))}; random-init encoder val kNN "
            f"{value_range(values(INIT_KEY))} (each trial's own encoder before its first step). "
            "*vs raw pixels* / *vs random init*: the trial's accuracy minus that baseline's "
            "(same split, same kNN k and T, same linear probe), in percentage points; positive: "
            "pretraining helped.\n")


def result_status(result: Any) -> str:
    """``finished``, ``stopped early``, a failure reason or ``error``: how a Ray ``Result``'s
    trial ended (:func:`trial_status`, the one rule for it)."""
    if getattr(result, "error", None) is not None:
        return ERROR
    return trial_status(result.metrics or {}, result.config or {})


def epochs_trained(result: Any) -> int:
    """Epochs a trial trained: its last result's ``epoch``, else (the placeholder result of a
    trial that failed mid-epoch carries none) the last epoch of its progress file."""
    epoch = number((result.metrics or {}).get("epoch"))
    if epoch is not None:
        return int(epoch)
    try:
        frame = result.metrics_dataframe
        last = frame["epoch"].max() if frame is not None and "epoch" in frame else None
    except Exception:  # no progress file, or no such attribute (a hand-built result)
        last = None
    value = number(last)
    return int(value) if value is not None else 0


@dataclasses.dataclass(frozen=True)
class Budget:
    """What a search spent, in trial-epochs, against what it would have without early stopping.

    ``planned``: Σ over trials of their configured epochs (trials × epochs), what the search
    would have trained had no trial ended early. ``trained`` + ``saved_by_asha`` +
    ``cut_by_failures`` = ``planned``.
    """

    trials: int
    finished: int
    stopped_early: int
    failed: int  # failure reasons (nan_loss, oom, collapsed) and errors
    trained: int  # Σ epochs actually trained
    planned: int
    saved_by_asha: int  # Σ (configured − trained) over trials stopped early
    cut_by_failures: int  # Σ (configured − trained) over failed trials
    epochs_per_trial: int | None  # the configured epochs when every trial shares them


def budget(results: Any) -> Budget:
    """The budget view of a sweep's results (every trial, errored ones too)."""
    counts = {FINISHED: 0, STOPPED_EARLY: 0, "failed": 0}
    trained = planned = saved = cut = 0
    per_trial: set[int | None] = set()
    for r in results:
        status = result_status(r)
        done = epochs_trained(r)
        # A config that does not say its epochs (hand-built): counted as planned = trained.
        configured = configured_epochs(r.config or {})
        per_trial.add(configured)
        configured = max(done, configured if configured is not None else done)
        counts[status if status in counts else "failed"] += 1
        trained, planned = trained + done, planned + configured
        if status == STOPPED_EARLY:
            saved += configured - done
        elif status != FINISHED:
            cut += configured - done
    return Budget(trials=sum(counts.values()), finished=counts[FINISHED],
                  stopped_early=counts[STOPPED_EARLY], failed=counts["failed"], trained=trained,
                  planned=planned, saved_by_asha=saved, cut_by_failures=cut,
                  epochs_per_trial=next(iter(per_trial)) if len(per_trial) == 1 else None)


def budget_line(b: Budget) -> str:
    """One line: trials by outcome, trial-epochs spent of those planned, what ASHA saved."""
    plan = (f"{b.trials} trials × {b.epochs_per_trial} epochs" if b.epochs_per_trial is not None
            else "Σ configured epochs")
    share = f" ({100.0 * b.saved_by_asha / b.planned:.0f} %)" if b.planned else ""
    cut = f"; failures ended {b.cut_by_failures} earlier" if b.cut_by_failures else ""
    return (f"**Budget**: {b.trials} trials: {b.finished} finished, {b.stopped_early} stopped "
            f"early by ASHA, {b.failed} failed. {b.trained} trial-epochs trained of {b.planned} "
            f"without early stopping ({plan}): ASHA saved {b.saved_by_asha}{share}{cut}.\n")


# ------------------------------------------------------------------------------------------------
# Selection: which trial of a search is re-run, exported, reported


# The one selection rule: which trial of a search is best. The sweep's summary and its exported
# encoder, best_experiment.yaml, the confirmation's candidates, --compare, the search benchmark and
# the sweep's MLflow run all read it through rank_trials / select_best; nothing else sorts trials.
SELECTION = ("trials are ranked by the search's own metric (search.metric, the value TPE optimises "
             "and ASHA compares) at their last epoch, better first; ties go to the higher linear-"
             "probe validation accuracy, then the trial id. Eligible: the trials that trained all "
             "their configured epochs (finished, with a probe or without); only when none did, "
             "those ASHA stopped early (on their last, earlier, value). Failed trials are never "
             "eligible, and the test split never plays a part. With confirmation on, the top K "
             "eligible configurations are re-run on fresh seeds and the winner is the one with the "
             "best mean of the same metric over those seeds.")


@dataclasses.dataclass
class TrialRecord:
    """One trial as the comparison and the report need it (plain data, no Ray objects)."""

    method: str
    trial_id: str
    stage: str  # "search" or "seed"
    params: dict[str, Any]  # the searched values, keyed as the space names them
    config: dict[str, Any]  # Ray's config: trial_from_config() of it rebuilds the TrialConfig
    status: str  # finished, stopped early, failed: <reason>, error
    epochs: list[float]
    val_knn: list[float]
    seconds: float
    metrics: dict[str, Any]  # the last result
    checkpoint: Any = None
    seed: int | None = None

    @property
    def val_knn_acc(self) -> float | None:
        v = self.metrics.get("val_knn_acc")
        return None if is_failed(self.status) or v is None else float(v)

    @property
    def probe_val_acc(self) -> float | None:
        v = self.metrics.get("probe_val_acc")
        return None if v is None or self.status != "finished" else float(v)

    def to_json(self) -> dict[str, Any]:
        keep = ("val_knn_acc", "probe_val_acc", "probe_test_acc", "test_knn_acc", "epoch",
                "time_total_s", "effective_rank", "embed_std_ratio", *BASELINE_KEYS,
                *LABEL_FREE_OBJECTIVES)
        return {"method": self.method, "trial_id": self.trial_id, "stage": self.stage,
                "seed": self.seed, "status": self.status, "params": self.params,
                "seconds": self.seconds, "epochs_trained": len(self.epochs),
                "metrics": {k: self.metrics[k] for k in keep if k in self.metrics}}


CHECKPOINT_PATH_KEY = "checkpoint_path"  # where TuneReportCallback puts a Train run's checkpoint


@dataclasses.dataclass(frozen=True)
class FolderCheckpoint:
    """A checkpoint folder read as Ray's ``Checkpoint`` is (``as_directory()``)."""

    path: str

    @contextlib.contextmanager
    def as_directory(self) -> Iterator[str]:
        yield self.path


def result_checkpoint(result: Any) -> Any:
    """A Ray ``Result``'s last checkpoint: Tune's, or, for a trial on several workers (whose
    checkpoints are its Ray Train run's), the folder of the last one its results name."""
    if result.checkpoint is not None:
        return result.checkpoint
    path = (result.metrics or {}).get(CHECKPOINT_PATH_KEY)
    return FolderCheckpoint(path) if isinstance(path, str) and path else None


def record(result: Any, stage: str, space_keys: Sequence[str] = ()) -> TrialRecord:
    """A :class:`TrialRecord` from a Ray ``Result``."""
    metrics = dict(result.metrics or {})
    config = dict(result.config or {})
    # How the trial ended is trial_status (via result_status, which adds Ray's
    # errors): finished = trained all its configured epochs, with a probe or without one.
    status = result_status(result)
    if status not in (ERROR, FINISHED, STOPPED_EARLY):  # a failure reason
        status = f"failed: {status}"
    epochs: list[float] = []
    val_knn: list[float] = []
    try:
        df = result.metrics_dataframe
    except Exception:  # no progress file (a trial that errored at once)
        df = None
    if df is not None and "val_knn_acc" in df and "epoch" in df:
        rows = df[["epoch", "val_knn_acc"]].dropna()
        last: dict[float, float] = {}  # a restarted trial may report an epoch twice
        for e, v in zip(rows["epoch"], rows["val_knn_acc"], strict=True):
            last[float(e)] = float(v)
        epochs, val_knn = list(last), list(last.values())
    params = {k: config[k] for k in space_keys if k in config}
    return TrialRecord(
        method=str(config.get("method", "?")), trial_id=str(metrics.get("trial_id", "?")),
        stage=stage, params=params, config=config, status=status, epochs=epochs,
        val_knn=val_knn, seconds=float(metrics.get("time_total_s", 0.0)), metrics=metrics,
        checkpoint=result_checkpoint(result),
        seed=int(config["seed"]) if "seed" in config else None)


def rank_key(t: TrialRecord, metric: str, mode: str) -> tuple[int, float, float, str]:
    """The sort key of :data:`SELECTION` (smaller is better): tier (0 finished, 1 stopped early,
    2 failed or without a finite value), the metric (better first), the probe's val accuracy,
    the trial id."""
    value = None if is_failed(t.status) else number(t.metrics.get(metric))
    tier = 2 if value is None else {FINISHED: 0, STOPPED_EARLY: 1}.get(t.status, 2)
    sign = -1.0 if mode == "max" else 1.0
    probe = t.probe_val_acc
    return (tier, sign * value if value is not None else math.inf,
            -probe if probe is not None else math.inf, t.trial_id)


def rank_trials(trials: Sequence[TrialRecord], metric: str, mode: str) -> list[TrialRecord]:
    """Every trial, best first (:data:`SELECTION`): the eligible ones, then the rest."""
    return sorted(trials, key=lambda t: rank_key(t, metric, mode))


def eligible(trials: Sequence[TrialRecord], metric: str, mode: str) -> list[TrialRecord]:
    """The trials :data:`SELECTION` may pick, best first: the finished ones with a value of
    ``metric``; when there are none, those stopped early."""
    tiers = [(rank_key(t, metric, mode)[0], t) for t in rank_trials(trials, metric, mode)]
    best_tier = min((tier for tier, _ in tiers), default=2)
    return [t for tier, t in tiers if tier == best_tier < 2]


def select_best(trials: Sequence[TrialRecord], metric: str, mode: str) -> TrialRecord | None:
    """The search's best trial by :data:`SELECTION`; None when no trial is eligible."""
    pool = eligible(trials, metric, mode)
    return pool[0] if pool else None


def mean_std(values: Sequence[float]) -> tuple[float | None, float | None]:
    """Mean and sample standard deviation (ddof 1; 0 for a single value); None when empty."""
    vals = [v for v in values if v is not None and math.isfinite(v)]
    if not vals:
        return None, None
    return statistics.fmean(vals), (statistics.stdev(vals) if len(vals) > 1 else 0.0)


def outcome(last: Mapping[str, Any], max_epochs: int | None = None,
            config: Mapping[str, Any] | None = None) -> tuple[str, dict[str, str]]:
    """A trial's MLflow status and tags from its last result: how it ended is
    :func:`sslsearch.results.trial_status` (the one rule), against the trial's own configured
    epochs (a searched ``epochs`` over the experiment's).

    ``config`` is the trial's Ray config; by default the one Ray stores in its results
    (``last["config"]``). ``max_epochs`` (the experiment's epochs) stands in only for a config
    that says no epochs of its own.
    """

    if config is None:
        stored = last.get("config")
        config = stored if isinstance(stored, Mapping) else {}
    if configured_epochs(config) is None and max_epochs is not None:
        config = {**config, "epochs": max_epochs}
    status = trial_status(last, config)
    if status == FINISHED:
        return "FINISHED", {"trial_status": "completed"}
    if status == STOPPED_EARLY:
        return "FINISHED", {"trial_status": "stopped_early", "stopped_by": "scheduler"}
    return "FAILED", {"trial_status": "failed", "failure_reason": status,
                      "failure_message": str(last.get("failure_message", ""))[:5000]}
