"""Pretraining throughput: our on-device pipeline against a conventional DataLoader one, one run.

A benchmark, not a test::

    python -m sslsearch.bench                                  # synthetic CIFAR-shaped data
    python -m sslsearch.bench --dataset digits --backbone small_cnn --batch-size 256
    python -m sslsearch.bench --backbone resnet18 --batch-size 512 --compile     # on a GPU
    python -m sslsearch.bench --dataset digits --trials 2      # K trials packed on one device
    python -m sslsearch.bench search --help                    # does the search beat defaults?
    python -m sslsearch.bench preflight --images 50000         # the pre-flight's cost
    python -m sslsearch.bench workers                          # images/s at 1 and 2 workers

**The two paths** run the *same* model step (``method(x1, x2, y, step)``, then backward and the
optimiser step, with the method, optimiser and augmentation configs built by
:mod:`sslsearch.train`'s own helpers) and differ in where the two views come from and, by default,
in precision: ours runs the training loop's (``--precision auto``: bf16 autocast on CUDA and on
CPUs with native bf16, :func:`sslsearch.trial.trial.uses_bf16`), the conventional path the public
libraries' default (``--conventional-precision library``: autocast on CUDA, float32 on the CPU).
``--conventional-precision same`` gives it ours, so that only the data path differs:

* **ours**: the dataset is resident on the device as ``uint8``; a batch is an index gather and both
  views are augmented batched, per-sample random, on the device
  (:func:`sslsearch.trial.augment.augment`); channels_last on every device (the model's layout, so
  both paths' inputs take it); optionally ``torch.compile`` of the backbone.
* **conventional** (what the public libraries do): a ``Dataset`` hands out PIL images of the same
  uint8 pixels, torchvision ``transforms.v2`` build two views per sample (RandomResizedCrop,
  flip, ColorJitter with p = 0.8, RandomGrayscale, blur/solarise where our config has them,
  ToImage/ToDtype/Normalize; colour ops skipped for 1-channel data) in ``DataLoader`` worker
  processes (persistent, shuffled, drop_last, pinned on CUDA); the batch is then copied to the
  device and goes through the identical step.

**Timing protocol.** Shared machines are noisy (the same step can take 2-5x longer from one minute
to the next), so the two paths are never timed in separate runs: after ``--warmup`` untimed steps
of each, ``--rounds`` rounds each time ``--window`` steps of ours, then ``--window`` steps of the
conventional path, in one process. A step's time is the interval between the starts of consecutive
steps: ``time.perf_counter`` on CPU (where ops are synchronous), CUDA events recorded on the stream
at each step start on GPU, with one ``synchronize`` per window only, so the host is never stalled
mid-window; the interval covers fetching the batch (gather, or waiting for the loader and the
host-to-device copy), augmentation and the model step. A window's step time is the mean of its
steps (a loader delivers in bursts: its workers finish batches nearly together, so one step waits
and the next few find their batch ready; the median single step would time the model, not the
loader). Per path the median and the minimum window step time become images/s (``batch / time``;
each image is two views), and the report gives the ratios of the medians and of the minima.

Two details keep either path from being timed on the other's work. The loader's workers keep a
prefetch queue of ``workers x prefetch_factor`` batches, filled while our window ran: before each
conventional window the ready batches are fetched and discarded (no model step, so the workers
cannot refill the queue meanwhile) until a fetch has to wait for a worker, and the window is then
at least twice the queue's length; before each of our windows the process sleeps while the
workers refill that queue (about as long as that many conventional steps took), so they do not
steal cores from our timed steps.

**CPU time.** On a CPU the paths also compete for cores with everything else on the machine, and
under load a path with more processes (the conventional one: main + workers) simply gets a larger
share of them. So the report also gives CPU seconds per step: this process's (``process_time``)
during each path's steps, plus for the conventional path its workers' (from ``/proc``, Linux)
over all rounds divided by the batches they produced; the ratio of those is throughput per core,
which load does not skew (but OpenMP threads spinning on an oversubscribed machine inflate it).

**Breakdown** of our step: ``--rounds x --window / 2`` iterations, each timing three phases back to
back: augmentation alone (batch gather + both views), the model alone (``embed`` of both views, a
trivial loss, backward, optimiser step) and a full step. Shares are medians over the full step's
median: *augmentation*, *model* (encoder + projector forward/backward and optimiser) and *loss &
extras*, the remainder: the loss's forward/backward and whatever else the method does (predictor,
EMA target, queue); it can come out slightly negative under noise and is reported as measured.

**Compute.** FLOPs per image (forward + backward, both views) are counted once with
``torch.utils.flop_counter`` on a meta-device copy of the method; achieved TFLOP/s is that times
images/s, and on a known GPU (or with ``--peak-tflops``) the compute bound is peak / FLOPs.

**Packing** (``--trials K``): one trial alone, then K trials at once on the same device, then one
alone again, each a subprocess running our path only (after warm-up they wait at a barrier, then
run for ``--duration`` seconds together) and printing its throughput as JSON. On CPU each of the K
gets ``cores / K`` intra-op threads (as Ray's ``cpus_per_trial`` would give it), a lone trial all.
"""

from __future__ import annotations

from sslsearch.bench.config import BenchConfig
from sslsearch.bench.conventional import conventional_transform
from sslsearch.bench.packing import run_packing
from sslsearch.bench.report import format_report
from sslsearch.bench.throughput import run_benchmark

__all__ = ["BenchConfig", "conventional_transform", "format_report", "run_benchmark",
           "run_packing"]
