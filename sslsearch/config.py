"""Trial and experiment configuration: frozen dataclasses, YAML loading, one-line errors.

One place for each default: :class:`TrialConfig` holds the settings every method shares (data,
backbone, optimisation, augmentation, evaluation); each method module holds a frozen ``Config``
dataclass with its own. YAML keys that are not fields are rejected with a message naming the file,
the key and the valid keys.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from sslsearch import methods
from sslsearch.errors import ConfigError
from sslsearch.schema import build_dataclass, read_yaml, resolve_file


def _shipped(folder: str) -> Path:
    """Where the shipped YAML files of ``folder`` are: inside the package when installed from a
    wheel (package data, pyproject's ``package-dir``), beside it in a source checkout, where users
    look for them (and where an editable install reads them)."""
    inside = Path(__file__).resolve().parent / folder
    return inside if inside.is_dir() else Path(__file__).resolve().parent.parent / folder


EXPERIMENTS_DIR = _shipped("experiments")
SPACES_DIR = _shipped("search_spaces")
# The experiment a command runs when none is named: the embedded Fashion-MNIST subset, where
# pretraining visibly helps (experiments/fashion_small.yaml); quick.yaml (digits) is the smoke set.
DEFAULT_EXPERIMENT = "fashion_small"


@dataclasses.dataclass(frozen=True)
class TrialConfig:
    """Everything one pretrain-then-probe trial needs, method hyperparameters aside."""

    # --- the method (its own hyperparameters live in sslsearch/methods/<method>.py: Config) ---
    method: str = "simclr"
    method_params: Mapping[str, Any] = dataclasses.field(default_factory=dict)
    # --- data ---
    dataset: str = "digits"
    data_dir: str | None = None
    download: bool = False
    val_fraction: float = 0.1  # held out of the training set: selection happens here, never on test
    split_seed: int = 0  # fixed across a sweep, so every trial is judged on the same validation set
    max_train_samples: int | None = None  # a seeded stratified subset, for quick runs
    image_size: int | None = None  # ImageFolder resize; None keeps the dataset's size
    # ImageFolder files that fail the header checks (empty, truncated, unidentifiable, over PIL's
    # decompression-bomb limit) are left out instead of refused (--skip-bad-images).
    skip_bad_images: bool = False
    # --- encoder ---
    backbone: str = "small_cnn"
    backbone_width: int = 0  # 0: the architecture's default width
    # --- optimisation ---
    epochs: int = 20
    batch_size: int = 256
    optimizer: str = "adamw"
    base_lr: float = 2e-3  # lr = base_lr × (batch_size / 256) ** p, p by lr_scaling
    # auto: the optimiser's rule (SGD, LARS: linear, p = 1; AdamW: none, p = 0: optim.py); or
    # linear, sqrt (p = ½), none
    lr_scaling: str = "auto"
    weight_decay: float = 1e-4
    momentum: float = 0.9  # SGD / LARS momentum
    warmup_epochs: float = 1.0
    final_lr_ratio: float = 0.0  # the cosine ends at base_lr × this ratio
    # --- augmentation (the SimCLR recipe; strength is searchable) ---
    crop_min_scale: float | None = None  # None: 0.2 for ≤ 32 px images, 0.08 for larger
    jitter_strength: float = 1.0  # scales brightness/contrast/saturation 0.4 and hue 0.1
    flip_p: float = 0.5
    grayscale_p: float = 0.2
    blur_p: float | None = None  # None: 0.5 for images ≥ 64 px, else 0
    solarize_p: float = 0.0  # applied to the second view only (BYOL / Barlow / VICReg option)
    # --- evaluation ---
    knn_k: int = 200  # capped by the size of the feature bank
    knn_t: float = 0.1
    probe: bool = True  # linear probe on frozen features after pretraining
    probe_max_iter: int = 500  # L-BFGS iterations of the probe at most, per weight decay tried
    # The probe on few labels too, after the last epoch (sslsearch.trial.fewlabel: 1, 5, 10, 100
    # labels a class and 1 % / 10 % of them, 5 seeded draws each, the same draws for every trial
    # of a split): reported as few_label_<setting>_test_acc, never searched on.
    few_label: bool = False
    # false: ignore the dataset's labels (an ImageFolder without class folders has none): no kNN,
    # no probe, no baselines; the search ranks trials by a label-free metric (search.metric).
    labels: bool = True
    # Reporting only, for a search without labels: an ImageFolder with class folders (train/<c>,
    # test/<c>) on which the final linear probe of the encoder is scored (probe_data_val_acc,
    # probe_data_test_acc); it never ranks or selects trials.
    probe_data_dir: str | None = None
    # RankMe, LiDAR and alpha-ReQ of the backbone's features every epoch
    # (sslsearch.trial.labelfree), on the first label_free_samples validation images (LiDAR: the
    # first 256 of them, 4 views each); about 1-2 s an epoch for the small CNN on 2 CPU cores.
    label_free: bool = True
    label_free_samples: int = 1024
    # --- runtime ---
    seed: int = 0
    device: str = "auto"  # auto: cuda when present, else cpu
    compile: bool = False  # torch.compile the backbone and the augmentation (GPU, long runs)
    compile_mode: str = "default"  # torch.compile mode (reduce-overhead: CUDA graphs)
    deterministic: bool = False  # CUDA: deterministic cuDNN kernels instead of autotuned ones
    # auto: bf16 autocast on CUDA and on CPUs with native bf16 (avx512_bf16 or AMX; about 2.5x
    # there), float32 on other CPUs; bf16: autocast on any device (slower where bf16 is emulated);
    # fp32: no autocast anywhere. The rule: sslsearch.trial.trial.uses_bf16.
    precision: str = "auto"
    check_finite_every: int = 50  # steps between non-finite-loss checks (each is one host sync)
    max_host_memory_gb: float | None = None  # a trial whose process grows past this fails: oom


# What a search may rank trials by: reported every epoch (ASHA compares trials at each rung), with
# the mode that makes it better. The label-free ones (sslsearch.trial.labelfree) need no labels.
SEARCH_METRICS = {"val_knn_acc": "max", "train_loss": "min", "rankme": "max", "lidar": "max",
                  "alpha_req_score": "max"}
# The label-free objectives (sslsearch.trial.labelfree.METRICS' objective keys, named here so that
# the command imports no torch; a test checks they match), and everything a search without labels
# may rank by.
LABEL_FREE_OBJECTIVES = ("rankme", "lidar", "alpha_req_score")
LABEL_FREE_METRICS = (*LABEL_FREE_OBJECTIVES, "train_loss")


@dataclasses.dataclass(frozen=True)
class SearchConfig:
    """How a sweep searches: budget, scheduler, resources (an experiment's ``search:`` block)."""

    num_samples: int = 8
    max_concurrent: int = 2
    metric: str = "val_knn_acc"
    mode: str = "max"
    grace_period: int = 3  # ASHA never stops a trial before this many epochs (slow starters)
    reduction_factor: int = 2
    cpus_per_trial: float = 1.0
    gpus_per_trial: float = 0.0
    max_failures: int = 1  # retries for infrastructure failures only
    stop_on_collapse: bool = True
    collapse_patience: int = 2
    # std of normalised embeddings × √d below this → collapsed (0 when every embedding is the
    # same). Healthy MoCo trials start as low as 0.052 in epoch 1 before spreading out (0.2-0.6).
    collapse_std_ratio: float = 0.03
    # effective rank / min(n, d) below this → collapsed. Measured on digits (README, "Collapse"):
    # healthy methods 0.12-0.63, SimSiam without stop-gradient 0.035-0.041.
    collapse_rank_ratio: float = 0.06
    reuse_actors: bool = True  # one Ray actor runs trial after trial (README, "Per-trial overhead")
    # Confirmation on fresh seeds (sslsearch.search.confirm): after the search, its top confirm_top
    # configurations and the experiment's own are re-run with confirm_seeds seeds the search
    # never used; the winner is the best mean over them. 3 seeds: the fewest that give an
    # interval; 2 candidates (None: 2, or num_samples when that is fewer): the runner-up is what
    # the winner must be told apart from.
    confirm: bool = True
    confirm_top: int | None = None
    confirm_seeds: int = 3
    # Data-parallel workers per trial (Ray Train inside the Tune trial, docs/workers.md); 1: the
    # trial is one process. With N > 1, cpus_per_trial and gpus_per_trial are each worker's.
    workers_per_trial: int = 1

    def __post_init__(self) -> None:
        """Range checks (a ValueError becomes ``FILE: search: ...`` through build_dataclass)."""
        if self.metric == "alpha_req":
            raise ValueError("metric alpha_req: rank by alpha_req_score, −|α − 1| (α-ReQ is best "
                             "near 1, neither largest nor smallest)")
        if self.metric not in SEARCH_METRICS:
            raise ValueError(f"metric {self.metric!r} is not reported every epoch; choose one of: "
                             f"{', '.join(SEARCH_METRICS)}")
        if self.mode != SEARCH_METRICS[self.metric]:
            raise ValueError(f"mode {self.mode!r}: {self.metric} is better when "
                             f"{SEARCH_METRICS[self.metric]}imised; allowed: "
                             f"{SEARCH_METRICS[self.metric]}")
        for key, low in (("num_samples", 1), ("max_concurrent", 1), ("grace_period", 1),
                         ("reduction_factor", 2), ("max_failures", 0), ("collapse_patience", 1),
                         ("confirm_top", 1), ("confirm_seeds", 1), ("workers_per_trial", 1)):
            if getattr(self, key) is not None and getattr(self, key) < low:
                raise ValueError(f"{key} = {getattr(self, key)!r} is out of range; allowed: an "
                                 f"integer ≥ {low}")
        if self.confirm and self.confirm_top is not None and self.confirm_top > self.num_samples:
            raise ValueError(f"confirm_top = {self.confirm_top} is more than num_samples = "
                             f"{self.num_samples}: only the search's own trials can be confirmed "
                             "(--confirm-top, --num-samples)")
        for key in ("cpus_per_trial", "gpus_per_trial", "collapse_std_ratio",
                    "collapse_rank_ratio"):
            if not getattr(self, key) >= 0:  # NaN fails too
                raise ValueError(f"{key} = {getattr(self, key)!r} is out of range; allowed: ≥ 0")
        if self.cpus_per_trial + self.gpus_per_trial <= 0:  # Tune refuses an empty bundle
            raise ValueError("cpus_per_trial = 0 with gpus_per_trial = 0: a trial needs a CPU or "
                             "a GPU; allowed: cpus_per_trial > 0 or gpus_per_trial > 0")


    @property
    def top_k(self) -> int:
        """The K of the confirmation: ``confirm_top``, by default 2 (fewer when the search has
        fewer trials)."""
        return self.confirm_top if self.confirm_top is not None else min(2, self.num_samples)


# The trial fields an experiment may set for one method (its ``methods:`` block): how the method
# optimises and which views it sees, never what data it reads, how it is judged or where it runs
# (those stay one value per experiment, so the command line's --epochs, --seed and --data-dir and
# the preflight checks hold for every method alike).
PER_METHOD_FIELDS = ("optimizer", "base_lr", "lr_scaling", "weight_decay", "momentum",
                     "final_lr_ratio", "crop_min_scale", "jitter_strength", "flip_p",
                     "grayscale_p", "blur_p", "solarize_p")


@dataclasses.dataclass(frozen=True)
class Experiment:
    """A fixed setup: trial defaults + search settings, loaded from ``experiments/*.yaml``.

    ``methods`` holds what differs for one method (``PER_METHOD_FIELDS``): a method whose loss
    collapses at the rate that suits the others gets its own rate here, beside the evidence.
    """

    trial: TrialConfig
    search: SearchConfig
    description: str = ""
    source: str = "<defaults>"
    methods: Mapping[str, Mapping[str, Any]] = dataclasses.field(default_factory=dict)

    def trial_for(self, method: str) -> TrialConfig:
        """The experiment's trial for ``method``: the shared settings, then the method's own
        (``methods:``); the experiment's method parameters only for its own method."""
        params = self.trial.method_params if method == self.trial.method else {}
        return dataclasses.replace(self.trial, method=method, method_params=params,
                                   **self.methods.get(method, {}))


COMPILE_MODES = ("default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs")
PRECISIONS = ("auto", "bf16", "fp32")
LR_SCALINGS = ("auto", "linear", "sqrt", "none")  # optim.LR_SCALING_POWERS' names, and auto


def _check_trial(cfg: TrialConfig, source: str) -> None:
    """Range checks that a type cannot express."""
    def bad(field: str, allowed: str) -> ConfigError:
        return ConfigError(f"{source}: trial.{field} = {getattr(cfg, field)!r} is out of range; "
                           f"allowed: {allowed}")
    if cfg.epochs < 1:
        raise bad("epochs", "an integer ≥ 1")
    if cfg.batch_size < 2:
        raise bad("batch_size", "an integer ≥ 2 (contrastive losses need negatives)")
    if cfg.base_lr <= 0:
        raise bad("base_lr", "a number > 0")
    if cfg.weight_decay < 0:
        raise bad("weight_decay", "a number ≥ 0")
    if not 0 < cfg.val_fraction <= 0.5:
        raise bad("val_fraction", "0 < val_fraction ≤ 0.5")
    if cfg.max_train_samples is not None and cfg.max_train_samples < 1:
        raise bad("max_train_samples", "an integer ≥ 1, or null for the whole training split")
    if cfg.image_size is not None and cfg.image_size < 1:
        raise bad("image_size", "an integer ≥ 1, or null for the dataset's own size")
    if cfg.warmup_epochs < 0 or cfg.warmup_epochs > cfg.epochs:
        raise bad("warmup_epochs", f"0 ≤ warmup_epochs ≤ epochs ({cfg.epochs})")
    if cfg.crop_min_scale is not None and not 0 < cfg.crop_min_scale <= 1:
        raise bad("crop_min_scale", "0 < crop_min_scale ≤ 1")
    for p in ("flip_p", "grayscale_p", "solarize_p"):
        if not 0 <= getattr(cfg, p) <= 1:
            raise bad(p, "a probability in [0, 1]")
    if cfg.probe_max_iter < 1:
        raise bad("probe_max_iter", "an integer ≥ 1")
    if cfg.label_free_samples < 8:
        raise bad("label_free_samples", "an integer ≥ 8")
    if cfg.knn_k < 1 or cfg.knn_t <= 0:
        raise bad("knn_k" if cfg.knn_k < 1 else "knn_t", "knn_k ≥ 1 and knn_t > 0")
    if cfg.device not in ("auto", "cpu") and not cfg.device.startswith("cuda"):
        raise bad("device", "auto, cpu, cuda or cuda:N")
    if cfg.compile_mode not in COMPILE_MODES:
        raise bad("compile_mode", ", ".join(COMPILE_MODES))
    if cfg.precision not in PRECISIONS:
        raise bad("precision", ", ".join(PRECISIONS))
    if cfg.lr_scaling not in LR_SCALINGS:
        raise bad("lr_scaling", ", ".join(LR_SCALINGS))


def trial_config(values: Mapping[str, Any], *, source: str = "<trial>",
                 base: TrialConfig | None = None) -> TrialConfig:
    """A validated :class:`TrialConfig`: ``base`` (or the defaults) updated with ``values``.

    The method and its parameters are checked against the method's own ``Config`` dataclass.
    """
    merged = dataclasses.asdict(base) if base is not None else {}
    merged.update(values)
    cfg = build_dataclass(TrialConfig, merged, source=source, where="trial")
    _check_trial(cfg, source)
    methods.method_config(cfg.method, cfg.method_params, source=source)
    return cfg


def load_experiment(name: str | Path | None = None) -> Experiment:
    """Load ``experiments/<name>.yaml`` (default :data:`DEFAULT_EXPERIMENT`) or a path to an
    experiment YAML."""
    path = resolve_file(name or DEFAULT_EXPERIMENT, EXPERIMENTS_DIR, "experiment")
    doc = read_yaml(path)
    if doc is None:
        raise ConfigError(f"{path}: the file is empty; expected keys: description, trial, search")
    if not isinstance(doc, dict):
        raise ConfigError(f"{path}: expected a mapping with keys description, trial, search; "
                          f"found {type(doc).__name__}")
    unknown = set(doc) - {"description", "trial", "search", "methods"}
    if unknown:
        raise ConfigError(f"{path}: unknown key {sorted(map(str, unknown))[0]}; "
                          "valid keys: description, methods, search, trial")
    description = doc.get("description", "")
    if not isinstance(description, str):
        raise ConfigError(f"{path}: description must be a string")
    trial = trial_config(doc.get("trial") or {}, source=str(path))
    search = build_dataclass(SearchConfig, doc.get("search") or {}, source=str(path),
                             where="search")
    check_objective(trial, search, source=str(path))
    per_method = _per_method(doc.get("methods"), trial, str(path))
    return Experiment(trial=trial, search=search, description=description.strip(),
                      source=str(path), methods=per_method)


def _per_method(doc: Any, trial: TrialConfig, source: str) -> dict[str, dict[str, Any]]:
    """An experiment's ``methods:`` block, checked: known methods, ``PER_METHOD_FIELDS`` only,
    values a trial accepts."""
    if doc is None:
        return {}
    if not isinstance(doc, dict):
        raise ConfigError(f"{source}: methods must map a method to its settings, e.g. "
                          "methods: {vicreg: {base_lr: 0.001}}")
    out: dict[str, dict[str, Any]] = {}
    for method, values in doc.items():
        if str(method) not in methods.available():
            raise ConfigError(f"{source}: methods.{method}: unknown method; known: "
                              f"{', '.join(methods.available())}")
        if not isinstance(values, dict):
            raise ConfigError(f"{source}: methods.{method} must map trial fields to values")
        for key in values:
            if key not in PER_METHOD_FIELDS:
                raise ConfigError(f"{source}: methods.{method}.{key}: not settable per method; "
                                  f"allowed: {', '.join(PER_METHOD_FIELDS)}")
        trial_config({**values, "method": str(method), "method_params": {}},
                     source=f"{source}: methods.{method}", base=trial)
        out[str(method)] = dict(values)
    return out


def check_objective(trial: TrialConfig, search: SearchConfig, *, source: str) -> None:
    """What the trial and search blocks must agree on, checked before any trial starts: a search
    without labels ranks by a label-free metric, which must be computed; a CUDA trial gets a
    GPU."""
    if not trial.labels and search.metric not in LABEL_FREE_METRICS:
        raise ConfigError(f"{source}: search.metric {search.metric} needs labels, and this "
                          f"experiment has none (labels: false); choose one of: "
                          f"{', '.join(LABEL_FREE_METRICS)}")
    if trial.device.startswith("cuda") and search.gpus_per_trial == 0:
        raise ConfigError(f"{source}: trial.device {trial.device} with search.gpus_per_trial 0: "
                          "Ray would hide every GPU from the trials, and each would fail; give "
                          "gpus_per_trial > 0 (a fraction packs trials) or device: auto")
    if search.metric in LABEL_FREE_OBJECTIVES and not trial.label_free:
        raise ConfigError(f"{source}: search.metric {search.metric} is a label-free metric, "
                          "which trial.label_free: false turns off")
