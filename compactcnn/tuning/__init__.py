"""Multi-objective tuning with Optuna: a study file -> trials, each a normal run directory.

    compactcnn tune STUDY.yaml [--out DIR] [--storage URL] [--study-name NAME]

The modules behind it, one concern each:

- `study`: the study file (base config, search space, objectives, budget), validated up front.
- `engine`: the same in Optuna's terms: distributions, the per-trial seeded sampler, the pruner.
- `storage`: the RDB storage (SQLite in the folder by default, any URL to share a study).
- `trial`: one trial's `compactcnn run` subprocess, watched for pruning.
- `runner`: the tuning loop, and taking over the trials of processes that died.
- `results`: the trials as rows of results.json, and their Pareto front.

A tuning folder:

    <dir>/tune.yaml            the resolved study, the study name and the storage (no password)
    <dir>/optuna.db            the default storage
    <dir>/runs/trial-<n>/      one run directory per trial
    <dir>/logs/trial-<n>.out   and .err: each trial's output
    <dir>/results.json         rows like a sweep's (plus trial.*), read by `compactcnn report`
"""

from compactcnn.tuning.study import Objective, Param, TuningStudy, load_tuning_study

__all__ = ["Objective", "Param", "TuningStudy", "load_tuning_study", "run_tuning"]


def run_tuning(*args, **kwargs):
    """`compactcnn.tuning.runner.run_tuning`, imported on first use (it loads Optuna)."""
    from compactcnn.tuning.runner import run_tuning as run

    return run(*args, **kwargs)
