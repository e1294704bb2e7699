"""Data parallelism for the training loop, torch only: a process group, "one process" by default.

A trial on N workers trains on the SAME global batch as a trial on one: each worker holds a shard
of B = B_global / N rows of every global batch, and the result equals one process on the whole
global batch up to float rounding. Three rules make it so (tests/test_distributed.py checks every
method against them):

1. **Every rank optimises the mean over ranks of its own loss.** A loss that needs the whole batch
   (negatives, batch statistics, Sinkhorn) is computed on embeddings gathered from every worker
   *with their gradients* (:meth:`ProcessGroup.gather`); every rank then holds the same global
   loss L. A loss that is a mean of per-sample terms may stay local (plain data parallel): the
   mean over ranks of the shard means is the global mean, the shards being equal.
2. **Gradients are averaged, not summed** (:meth:`ProcessGroup.average_gradients`). The gather's
   backward sums, over ranks, the gradient each rank's L sends to a shard's rows: N × ∂L/∂z for a
   global L. Averaging the parameters' gradients over the N ranks divides that N back out:
   ``(1/N) Σ_r N · ∂L/∂θ|_r = ∂L/∂θ``. A parameter used after the gather (SwAV's prototypes)
   gets the whole ∂L/∂θ on every rank, and the average of N equal values is that value. Summed
   instead of averaged, every gradient would be N times too large (the bug lightly shipped).
3. **Random draws are made for the whole global batch** on every rank, from generators that stay
   in step (same seed, same calls), and each rank keeps its rows (:meth:`ProcessGroup.sharded`):
   sample i gets the same crop, noise, mask or permutation whatever N.

BatchNorm sees the global batch (:class:`GlobalBatchNorm`, the moments all-gathered with their
gradients): ``torch.nn.SyncBatchNorm`` runs only on CUDA, and the CPU's gloo path needs it too.

:class:`ProcessGroup` is one process: every collective returns its input and no
``torch.distributed`` function is called, so the single-process loop runs exactly as it did.
:class:`TorchProcessGroup` is the real thing, over an initialised ``torch.distributed`` group
(gloo on the CPU, NCCL on GPUs); Ray Train sets one up in each worker
(:mod:`sslsearch.search.trainable_workers`).
"""

from __future__ import annotations

import contextlib
import os
import socket
import warnings
from collections.abc import Callable, Iterator
from typing import Any

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import Tensor, nn
from torch.distributed.nn import functional as dist_nn


class ProcessGroup:
    """One process: world size 1, rank 0; every collective is the identity."""

    world_size: int = 1
    rank: int = 0

    @property
    def is_main(self) -> bool:
        """Rank 0: the worker that evaluates, checkpoints and reports."""
        return self.rank == 0

    def shard(self, x: Tensor, *, views: int = 1, dim: int = 0) -> Tensor:
        """This rank's rows of ``x``, a tensor holding the whole global batch along ``dim``.

        ``views`` > 1: ``x`` is that many global batches one after the other (``cat([x1, x2])``);
        each is cut into ``world_size`` equal parts and this rank's part of each is kept, in
        order, as ``cat([x1_r, x2_r])``. The inverse of :meth:`gather`.
        """
        if self.world_size == 1:
            return x
        per = x.shape[dim] // (views * self.world_size)
        blocks = x.reshape(*x.shape[:dim], views, self.world_size, per, *x.shape[dim + 1:])
        return blocks.select(dim + 1, self.rank).flatten(dim, dim + 1)  # views·per rows

    def sharded(self, draw: Callable[[int], Tensor], rows: int, *, views: int = 1,
                dim: int = 0) -> Tensor:
        """``draw(n)`` for the global batch (n = ``rows`` × world size), this rank's rows.

        ``draw`` makes one random draw with ``n`` rows along ``dim`` (``rows``: this rank's);
        every rank makes the same draw, so the random streams stay in step and the numbers each
        sample gets are those one process drawing for the whole batch would give it. One
        process: ``draw(rows)``, exactly the draw the method always made.
        """
        return self.shard(draw(rows * self.world_size), views=views, dim=dim)

    def gather(self, x: Tensor, *, views: int = 1) -> Tensor:
        """The global batch from every rank's rows, in rank order (the inverse of
        :meth:`shard`). With gradients when ``x`` requires them: the backward sums, over ranks,
        the gradients sent to each rank's rows (``torch.distributed.nn.functional.all_gather``;
        the plain ``all_gather`` would cut the graph)."""
        return x

    def all_reduce_sum(self, x: Tensor) -> Tensor:
        """``Σ_r x_r`` on every rank, differentiable (the backward sums the gradients too)."""
        return x

    def extreme(self, x: Tensor, op: str) -> Tensor:
        """The element-wise ``"min"`` or ``"max"`` over ranks of ``x`` (no gradient)."""
        return x

    def mean(self, x: Tensor) -> Tensor:
        """The mean over ranks of ``x`` (for logging: no gradient)."""
        return x

    def any(self, flag: bool) -> bool:
        """True on every rank when ``flag`` is true on any (one decision, taken together)."""
        return flag

    def maximum(self, value: float) -> float:
        """The largest ``value`` over ranks, on every rank."""
        return value

    def broadcast_object(self, obj: Any) -> Any:
        """Rank 0's ``obj`` (picklable) on every rank."""
        return obj

    def average_gradients(self, module: nn.Module) -> None:
        """Replace each parameter's gradient by its mean over ranks (rule 2 above)."""

    def broadcast_module(self, module: nn.Module) -> None:
        """Rank 0's parameters and buffers copied to every rank."""

    def sync_random_state(self, generator: torch.Generator) -> None:
        """Rank 0's states of ``generator`` and of torch's global generators on every rank (after
        a phase only rank 0 ran, such as the evaluation, which draws from them)."""

    def all_gather_strings(self, value: str) -> list[str]:
        """Every rank's ``value``, in rank order."""
        return [value]


ONE_PROCESS = ProcessGroup()


class TorchProcessGroup(ProcessGroup):
    """The default group of an initialised ``torch.distributed`` (gloo or NCCL)."""

    def __init__(self) -> None:
        if not dist.is_available() or not dist.is_initialized():
            raise RuntimeError("TorchProcessGroup needs torch.distributed initialised first")
        self.world_size = dist.get_world_size()
        self.rank = dist.get_rank()
        # torch 2.14 marks torch.distributed.nn.functional deprecated in favour of a private
        # module; it is the public collective with a gradient, and works as documented.
        warnings.filterwarnings("ignore", category=FutureWarning,
                                message=r"torch\.distributed\.nn\.functional\.")

    def gather(self, x: Tensor, *, views: int = 1) -> Tensor:
        if x.requires_grad:
            parts = list(dist_nn.all_gather(x.contiguous()))  # type: ignore[no-untyped-call]
        else:
            wire = x.to(torch.uint8) if x.dtype == torch.bool else x.contiguous()  # gloo: no bool
            parts = [torch.empty_like(wire) for _ in range(self.world_size)]
            dist.all_gather(parts, wire)
            parts = [p.to(x.dtype) for p in parts]
        stacked = torch.stack(parts)  # stacked: N x (views·B) x ...
        if views == 1:
            out = stacked.flatten(0, 1)
        else:
            out = stacked.reshape(self.world_size, views, -1, *x.shape[1:]).transpose(
                0, 1).flatten(0, 2)
        if x.dim() == 4 and not x.is_contiguous():  # images stay channels_last, as the model's
            return out.contiguous(memory_format=torch.channels_last)
        return out

    def all_reduce_sum(self, x: Tensor) -> Tensor:
        out: Tensor = dist_nn.all_reduce(x)  # type: ignore[no-untyped-call]
        return out

    def extreme(self, x: Tensor, op: str) -> Tensor:
        out = x.detach().clone()
        dist.all_reduce(out, op=dist.ReduceOp.MIN if op == "min" else dist.ReduceOp.MAX)
        return out

    def mean(self, x: Tensor) -> Tensor:
        out = x.detach().clone()
        dist.all_reduce(out)
        return out / self.world_size

    def any(self, flag: bool) -> bool:
        return self.maximum(float(flag)) > 0

    def maximum(self, value: float) -> float:
        out = torch.tensor([value], dtype=torch.float64, device=self._device())
        dist.all_reduce(out, op=dist.ReduceOp.MAX)
        return float(out.item())

    def broadcast_object(self, obj: Any) -> Any:
        box = [obj]
        dist.broadcast_object_list(box, src=0, device=self._device())
        return box[0]

    def average_gradients(self, module: nn.Module) -> None:
        # One collective for all gradients (a flat buffer), not one per tensor. A parameter
        # without a gradient has none on every rank (same graph, same code path).
        grads = [p.grad for p in module.parameters() if p.grad is not None]
        if not grads:
            return
        flat = torch.cat([g.reshape(-1) for g in grads])
        dist.all_reduce(flat)
        flat /= self.world_size
        for g, chunk in zip(grads, torch.split(flat, [g.numel() for g in grads]), strict=True):
            g.copy_(chunk.view(g.shape))

    def broadcast_module(self, module: nn.Module) -> None:
        with torch.no_grad():
            for t in [*module.parameters(), *module.buffers()]:
                buf = t.data.contiguous()
                dist.broadcast(buf, src=0)
                if buf.data_ptr() != t.data.data_ptr():
                    t.data.copy_(buf)

    def sync_random_state(self, generator: torch.Generator) -> None:
        states = {"generator": generator.get_state(), "torch": torch.get_rng_state()}
        if torch.cuda.is_available() and torch.cuda.is_initialized():  # type: ignore[no-untyped-call]
            states["cuda"] = torch.cuda.get_rng_state()
        states = self.broadcast_object(states)
        generator.set_state(states["generator"])
        torch.set_rng_state(states["torch"])
        if "cuda" in states:
            torch.cuda.set_rng_state(states["cuda"])

    def all_gather_strings(self, value: str) -> list[str]:
        out: list[Any] = [None] * self.world_size
        dist.all_gather_object(out, value)
        return [str(v) for v in out]

    def _device(self) -> torch.device:
        # NCCL moves objects and tensors through the rank's GPU; gloo through the CPU.
        if dist.get_backend() == "nccl":
            return torch.device("cuda", torch.cuda.current_device())
        return torch.device("cpu")


class GlobalBatchNorm(nn.SyncBatchNorm):
    """BatchNorm over the global batch on any device: the batch moments of every rank are
    all-gathered with their gradients and combined (Chan et al.'s parallel variance)::

        n = Σ_r n_r,   μ = Σ_r n_r μ_r / n,   σ² = Σ_r [n_r σ_r² + n_r (μ_r − μ)²] / n

    so the output, the gradients and the running statistics (updated with the unbiased
    ``σ² · n/(n − 1)``, as ``nn.BatchNorm``) are those of one BatchNorm on all n rows. Same
    parameter and buffer names as ``nn.BatchNorm1d/2d``: checkpoints move between one and many
    workers. Evaluation mode uses the running statistics and calls no collective (rank 0
    evaluates alone).
    """

    group: ProcessGroup

    def _check_input_dim(self, x: Tensor) -> None:
        if x.dim() < 2:
            raise ValueError(f"expected at least 2D input (got {x.dim()}D input)")

    def forward(self, x: Tensor) -> Tensor:
        if not self.training and self.track_running_stats:
            return F.batch_norm(x, self.running_mean, self.running_var, self.weight, self.bias,
                                False, 0.0, self.eps)
        dims = [0, *range(2, x.dim())]
        shape = [1, -1] + [1] * (x.dim() - 2)
        xf = x.float() if x.dtype in (torch.float16, torch.bfloat16) else x
        var_r, mean_r = torch.var_mean(xf, dim=dims, unbiased=False)  # C each
        n_r = torch.full((1,), xf.numel() / xf.shape[1], dtype=xf.dtype, device=xf.device)
        stats = self.group.gather(torch.cat([n_r, mean_r, var_r]).unsqueeze(0))  # N x (1+2C)
        c = x.shape[1]
        counts, means, variances = stats[:, :1], stats[:, 1:1 + c], stats[:, 1 + c:]
        n = counts.sum()
        mean = (counts * means).sum(dim=0) / n  # C
        var = (counts * (variances + (means - mean).pow(2))).sum(dim=0) / n  # C, biased
        if self.training and self.track_running_stats:
            self._update_running(mean.detach(), var.detach(), n.detach())
        y = (xf - mean.view(shape)) * torch.rsqrt(var.view(shape) + self.eps)
        if self.affine:
            y = y * self.weight.view(shape) + self.bias.view(shape)
        return y.to(x.dtype)

    @torch.no_grad()
    def _update_running(self, mean: Tensor, var: Tensor, n: Tensor) -> None:
        assert self.num_batches_tracked is not None
        assert self.running_mean is not None and self.running_var is not None
        self.num_batches_tracked.add_(1)
        # nn.BatchNorm's rule: momentum, or a cumulative average when momentum is None.
        factor = (1.0 / float(self.num_batches_tracked) if self.momentum is None
                  else self.momentum)
        unbiased = var * n / (n - 1).clamp_min(1)
        self.running_mean.mul_(1 - factor).add_(mean.to(self.running_mean.dtype), alpha=factor)
        self.running_var.mul_(1 - factor).add_(unbiased.to(self.running_var.dtype), alpha=factor)


def global_batch_norm(module: nn.Module, group: ProcessGroup) -> nn.Module:
    """``module`` with every ``nn.BatchNorm1d/2d/3d`` replaced by a :class:`GlobalBatchNorm` over
    ``group`` (same parameters, buffers and mode). One process: ``module`` as it is."""
    if group.world_size == 1:
        return module
    if isinstance(module, nn.modules.batchnorm._BatchNorm) and not isinstance(
            module, GlobalBatchNorm):
        bn = GlobalBatchNorm(module.num_features, module.eps, module.momentum, module.affine,
                             module.track_running_stats)
        bn.group = group
        if module.affine:
            with torch.no_grad():
                bn.weight = module.weight
                bn.bias = module.bias
        bn.running_mean = module.running_mean
        bn.running_var = module.running_var
        bn.num_batches_tracked = module.num_batches_tracked
        bn.train(module.training)
        return bn
    for name, child in module.named_children():
        module.add_module(name, global_batch_norm(child, group))
    return module


def rows_like(x: Tensor, n: int) -> Tensor:
    """An empty tensor like ``x`` (dtype, device, memory format) with ``n`` rows: what
    ``torch.randn_like(x)`` fills, for a global batch of ``n`` rows (the same numbers, in the same
    order, as ``randn_like`` on an ``x`` of ``n`` rows)."""
    fmt = (torch.channels_last if x.dim() == 4 and not x.is_contiguous()
           and x.is_contiguous(memory_format=torch.channels_last) else torch.contiguous_format)
    return torch.empty((n, *x.shape[1:]), dtype=x.dtype, device=x.device, memory_format=fmt)


# ------------------------------------------------------------------------------------------------
# Local worker processes (no Ray): the equivalence tests and the throughput benchmark.


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextlib.contextmanager
def local_group(rank: int, world_size: int, port: int) -> Iterator[TorchProcessGroup]:
    """A gloo group of ``world_size`` processes on this machine, every socket on 127.0.0.1."""
    os.environ.setdefault("GLOO_SOCKET_IFNAME", "lo")  # gloo's own sockets: loopback too
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank,
                            world_size=world_size)
    try:
        yield TorchProcessGroup()
    finally:
        dist.destroy_process_group()


def spawn(fn: Callable[..., None], world_size: int, *args: Any) -> None:
    """Run ``fn(group, *args)`` in ``world_size`` fresh processes joined by a local gloo group
    (``torch.multiprocessing``'s spawn; ``fn`` must be importable); wait for all of them."""
    from torch.multiprocessing.spawn import spawn as mp_spawn

    mp_spawn(_spawned, args=(world_size, free_port(), fn, args),  # type: ignore[no-untyped-call]
             nprocs=world_size, join=True)


def _spawned(rank: int, world_size: int, port: int, fn: Callable[..., None],
             args: tuple[Any, ...]) -> None:
    with local_group(rank, world_size, port) as group:
        fn(group, *args)
