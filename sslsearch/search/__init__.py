"""The search: what turns a search space and an experiment into trials, runs them on Ray Tune and
keeps their records.

The space and its distributions (``space``, ``distributions``, ``optuna_space``), the checks before
Ray starts (``preflight``), the sweep (``sweep``: the Tuner, ASHA, resume; ``sweepdir``: its folder
and lock), what proposes and stops trials (``searchers``, ``stopping``), the Ray glue that runs one
(``trainable``, ``trainable_workers``), MLflow tracking (``tracking``, ``tracking_uri``,
``outbox``) and the confirmation of a winner on fresh seeds (``confirm``, ``reruns``).

They import the ground floor, the trial floor (``trial/``, ``parts/``, ``methods/``, ``data/``,
``sslsearch.train``) and each other, never the reports or the commands; Ray, Optuna and MLflow only
in the glue modules tests/test_isolation.py names (docs/design.md).
"""
