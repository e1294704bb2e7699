"""The confirmation in words: the summary's "Confirmed on fresh seeds" section (Markdown, also
printed and logged to MLflow) and its plain sentences, from a ``confirm.Confirmation``."""

from __future__ import annotations

from sslsearch.results import FINISHED, fmt_delta, number
from sslsearch.search.confirm import (
    Candidate,
    Confirmation,
    Stat,
    fmt_interval,
    fmt_stat,
    scale,
    stat,
)


def difference_sentence(what: str, s: Stat | None, metric: str) -> str:
    """``the winner minus the runner-up: +0.55 points [−0.31, +1.41], 3 paired seeds; not
    distinguishable from zero``."""
    if s is None:
        return f"{what}: n/a (no seed on which both finished)"
    k, unit = scale(metric)
    verdict = ("distinguishable from zero" if s.excludes_zero else
               "not distinguishable from zero" if s.n > 1 else "one pair: no interval")
    return (f"{what}: {fmt_delta(s.mean * k, 2)}{unit} 95 % interval "
            f"{fmt_interval(s, metric, signed=True)}, {s.n} paired seeds; {verdict}")


def _mean_of(c: Candidate, key: str) -> str:
    s = stat([v for r in c.runs
              if r.status == FINISHED and (v := number(r.metrics.get(key))) is not None])
    return "n/a" if s is None else f"{s.mean * 100:.2f}"


def _params(c: Candidate) -> str:
    if c.source is None:
        return "the experiment's own configuration"
    return ", ".join(f"{k}={v:.3g}" if isinstance(v, float) else f"{k}={v}"
                     for k, v in sorted(c.source.params.items()))


def sentences(conf: Confirmation) -> list[str]:
    """What the confirmation found, in words (printed at the end of a sweep)."""
    metric, win = conf.metric, conf.winner
    k, unit = scale(metric)
    out = []
    if len(conf.searched) < conf.top:
        out.append(f"only {len(conf.searched)} trial(s) were eligible (finished): confirmed "
                   f"those instead of the top {conf.top}")
    if win is None:
        return [*out, "no candidate finished a confirmation run: no confirmed winner"]
    ws = win.stat(metric)
    out.append(f"winner {win.name}: {metric} {fmt_stat(ws, metric)} over fresh seeds "
               f"{', '.join(map(str, sorted(win.values(metric))))} (95 % interval "
               f"{fmt_interval(ws, metric)})")
    if conf.optimism is not None:
        out.append(f"optimism of the search: its best single-seed {metric} minus that "
                   f"configuration's confirmed mean = {fmt_delta(conf.optimism * k, 2)}{unit}")
    if conf.runner_up is not None:
        out.append(difference_sentence(f"winner − runner-up {conf.runner_up.name}",
                                       conf.versus(conf.runner_up), metric))
    d = conf.defaults
    if d is not None and d is not win:
        vs = conf.versus(d)
        out.append(difference_sentence("winner − the experiment's own configuration", vs, metric))
        if vs is not None and vs.excludes_zero and (vs.mean < 0) == (conf.mode == "max"):
            out.append("the experiment's own configuration did better on the fresh seeds: the "
                       "search found nothing better than it")
    elif d is win:
        out.append("the winner is the experiment's own configuration: the search found nothing "
                   "that confirmed better")
    return out


def markdown(conf: Confirmation, search_seed: int | None = None) -> str:
    """The summary's first section: the candidates ranked by their confirmed mean."""
    metric = conf.metric
    k, _ = scale(metric)
    at = f" (seed {search_seed})" if search_seed is not None else ""
    lines = [f"## Confirmed on fresh seeds {', '.join(map(str, conf.seeds))}", "",
             f"The search's top {conf.top} by `{metric}` (the selection rule) re-run on seeds "
             "the search never used, beside the experiment's own configuration on the same "
             "seeds; ranked by their mean over those seeds, the winner first (its configuration "
             "is `best_experiment.yaml` and its run nearest the mean the exported encoder).", "",
             f"| rank | configuration | search {metric}{at} | confirmed mean ± sd | 95 % interval "
             "| runs finished | random init (mean) | probe val (mean) | parameters |",
             "|---|---|---|---|---|---|---|---|---|"]
    for rank, c in enumerate(conf.ranked(), start=1):
        searched = number(c.source.metrics.get(metric)) if c.source is not None else None
        name = f"**{c.name}, winner**" if c is conf.winner else c.name
        lines.append(
            f"| {rank} | {name} | {'n/a' if searched is None else f'{searched * k:.2f}'} | "
            f"{fmt_stat(c.stat(metric), metric)} | {fmt_interval(c.stat(metric), metric)} | "
            f"{len(c.values(metric))}/{len(c.runs)} | {_mean_of(c, 'init_knn_acc')} | "
            f"{_mean_of(c, 'probe_val_acc')} | {_params(c)} |")
    return "\n".join([*lines, "", *(f"- {s}" for s in sentences(conf))]) + "\n"
