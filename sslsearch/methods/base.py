"""The interface every SSL method implements (about fifty lines, on purpose).

A method owns the heads (projector ``g``, predictor ``h``) and any state (EMA target, queue,
prototypes) as submodules and buffers, so ``state_dict()`` checkpoints all of it. The loss itself is
a pure function in the method's module; ``forward`` wires tensors into it.
"""

from __future__ import annotations

import dataclasses
from typing import Any, ClassVar

from torch import Tensor, nn

from sslsearch.parts.distributed import ONE_PROCESS, ProcessGroup
from sslsearch.parts.networks import Backbone, mlp


@dataclasses.dataclass(frozen=True)
class Step:
    """Where training stands: passed to every ``forward`` and ``after_step`` call."""

    step: int  # global optimiser step, from 0
    total_steps: int
    epoch: int  # from 0
    steps_per_epoch: int

    @property
    def progress(self) -> float:
        """Fraction of training done, in [0, 1] (drives momentum ramps)."""
        return self.step / max(1, self.total_steps)


@dataclasses.dataclass(frozen=True)
class Task:
    """What the method is told about the data."""

    kind: str  # "image" or "tabular"
    num_classes: int


class Method(nn.Module):
    """Base class: ``backbone`` is the encoder ``f`` whose features are evaluated.

    ``group`` is the trial's process group (:mod:`sslsearch.parts.distributed`): one process unless
    the trial runs on several workers, each forwarding its shard of the global batch. Each method's
    docstring says what it gathers from the other workers and why.
    """

    supervised: ClassVar[bool] = False  # True: the loss uses class labels (SupCon)
    group: ProcessGroup = ONE_PROCESS  # set by sslsearch.trial.trial.setup_trial

    def __init__(self, cfg: Any, backbone: Backbone, task: Task) -> None:
        super().__init__()
        self.cfg = cfg
        self.backbone = backbone
        self.task = task

    def forward(self, x1: Tensor, x2: Tensor, y: Tensor, step: Step) -> dict[str, Tensor]:
        """The loss on two augmented views of a batch: ``{"loss": scalar, <named terms>...}``.

        Extra entries are logged as ``train_<name>`` (averaged over the epoch, on the device).
        """
        raise NotImplementedError

    def embed(self, x: Tensor) -> Tensor:
        """The embedding whose collapse is monitored (default: ``g(f(x))``)."""
        projector = self.get_submodule("projector")
        return projector(self.backbone(x))  # type: ignore[no-any-return]

    def view_overrides(self) -> dict[str, Any]:
        """Augmentation settings (``AugmentConfig`` field names) this method's views need whatever
        the trial's are, e.g. no random crop for a task read off the image's layout (default:
        none)."""
        return {}

    def fixed_lr_prefixes(self) -> tuple[str, ...]:
        """Parameter-name prefixes the LR schedule leaves at the peak rate (default: none)."""
        return ()

    def after_step(self, step: Step) -> None:
        """Called after each optimiser step: EMA target updates, queue pushes, ..."""

    def before_optimizer_step(self, step: Step) -> None:
        """Called between ``backward`` and ``optimizer.step`` (e.g. SwAV freezes prototypes)."""


class ProjectedMethod(Method):
    """A method whose loss reads the projections ``z = g(f(x))`` of both views, through SimCLR's
    projector ``g`` (``Linear-BN-ReLU-Linear``, ``cfg.proj_hidden_dim`` → ``cfg.proj_output_dim``):
    SimCLR, N-pair and SupCon differ only in the loss."""

    def __init__(self, cfg: Any, backbone: Backbone, task: Task) -> None:
        super().__init__(cfg, backbone, task)
        self.projector = mlp([backbone.out_dim, cfg.proj_hidden_dim, cfg.proj_output_dim])

    def project(self, x1: Tensor, x2: Tensor) -> tuple[Tensor, Tensor]:
        """``(g(f(x1)), g(f(x2)))``."""
        return self.projector(self.backbone(x1)), self.projector(self.backbone(x2))


def check_temperature(temperature: float) -> None:
    """A softmax temperature τ must be positive (the logits are divided by it)."""
    if temperature <= 0:
        raise ValueError(f"temperature must be > 0, found {temperature}")
