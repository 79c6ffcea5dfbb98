"""The study file in Optuna's terms: distributions, the sampler, the pruner and the constraint.

Every trial gets a fresh sampler seeded from (seed, trial number). One seed for the whole
study would make two processes sharing a study suggest the same parameters in lock step (each
has its own generator); seeding per trial number keeps them apart and still makes a study
repeatable, even across restarts.
"""

from __future__ import annotations

import json
import warnings
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import optuna
from optuna.distributions import (
    BaseDistribution,
    CategoricalDistribution,
    FloatDistribution,
    IntDistribution,
)
from optuna.samplers import BaseSampler
from optuna.trial import FrozenTrial, TrialState

from compactcnn.tuning.study import Param, TuningStudy

# The name of the trial constraint `bytes - max_bytes` (feasible when <= 0), and the system
# attribute `Trial.set_constraint` stores it under: a trial told by another process than the one
# that ran it gets it written there directly (tests/test_tune.py checks the two agree).
CONSTRAINT = "max_bytes"
CONSTRAINT_SYSTEM_ATTR = f"constraints:{CONSTRAINT}"
_PRIMITIVES = (type(None), bool, int, float, str)


def _encoded_choices(param: Param) -> tuple:
    """Optuna stores only None, bool, int, float and str choices; others go as JSON text."""
    if all(isinstance(choice, _PRIMITIVES) for choice in param.choices):
        return param.choices
    return tuple(json.dumps(choice) for choice in param.choices)


def distribution(param: Param) -> BaseDistribution:
    """The Optuna distribution of one search-space entry."""
    if param.kind == "float":
        return FloatDistribution(param.low, param.high, log=param.log, step=param.step)
    if param.kind == "int":
        return IntDistribution(param.low, param.high, log=param.log, step=param.step or 1)
    return CategoricalDistribution(_encoded_choices(param))


def distributions(study: TuningStudy) -> dict[str, BaseDistribution]:
    """Space key -> distribution, for `Study.ask` and `enqueue_trial`."""
    return {param.key: distribution(param) for param in study.space}


def config_values(study: TuningStudy, params: dict[str, Any]) -> dict[str, Any]:
    """A trial's Optuna params as config values (JSON-encoded choices decoded)."""
    values = {}
    for param in study.space:
        if param.key not in params:
            continue
        value = params[param.key]
        if param.kind == "choice" and _encoded_choices(param) != param.choices:
            value = json.loads(value)
        values[param.key] = value
    return values


def constraint(trial: FrozenTrial) -> Sequence[float]:
    """The trial's constraint values (for charts that take a `constraints_func`)."""
    return list(trial.constraints.values())


def _build_sampler(study: TuningStudy, seed: int) -> BaseSampler:
    # TPE's multivariate mode is "experimental" in Optuna and warns on every construction, that
    # is every trial here; it is stable enough for us. Constraints need no set-up: the samplers
    # read what the trial recorded with `Trial.set_constraint`.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        return _new_sampler(study, seed)


def _new_sampler(study: TuningStudy, seed: int) -> BaseSampler:
    if study.sampler == "random":
        return optuna.samplers.RandomSampler(seed=seed)
    if study.sampler == "nsga2":
        # A population of the whole budget would make every trial random; 10 or fewer per
        # generation lets small studies evolve.
        population = max(2, min(10, study.trials // 2))
        return optuna.samplers.NSGAIISampler(population_size=population, seed=seed)
    # Random start-up trials: a fifth of the budget, at least 2 and at most 10.
    startup = max(2, min(10, study.trials // 5))
    return optuna.samplers.TPESampler(n_startup_trials=startup, seed=seed, multivariate=True)


class TrialSeededSampler(BaseSampler):
    """Delegates to a sampler built afresh for each trial, seeded from (seed, trial number).

    Args:
        build: Builds the real sampler from a seed.
        seed: The study's seed.
    """

    def __init__(self, build: Callable[[int], BaseSampler], seed: int) -> None:
        self._build = build
        self._seed = seed
        self._inner = build(seed)

    def _for(self, trial: FrozenTrial) -> BaseSampler:
        # Hashed, not `seed + number`: neighbouring small seeds give NumPy generators whose
        # first draws nearly agree, so the first trials of a study were near-duplicates.
        entropy = np.random.SeedSequence([self._seed, trial.number]).generate_state(1)[0]
        self._inner = self._build(int(entropy))
        return self._inner

    def before_trial(self, study: optuna.Study, trial: FrozenTrial) -> None:
        self._for(trial).before_trial(study, trial)

    def infer_relative_search_space(
        self, study: optuna.Study, trial: FrozenTrial
    ) -> dict[str, BaseDistribution]:
        return self._inner.infer_relative_search_space(study, trial)

    def sample_relative(
        self, study: optuna.Study, trial: FrozenTrial, search_space: dict[str, BaseDistribution]
    ) -> dict[str, Any]:
        return self._inner.sample_relative(study, trial, search_space)

    def sample_independent(
        self,
        study: optuna.Study,
        trial: FrozenTrial,
        param_name: str,
        param_distribution: BaseDistribution,
    ) -> Any:
        return self._inner.sample_independent(study, trial, param_name, param_distribution)

    def after_trial(
        self,
        study: optuna.Study,
        trial: FrozenTrial,
        state: TrialState,
        values: Sequence[float] | None,
    ) -> None:
        # A trial told by another process than the one that ran it (a finished orphan) still
        # gets its constraint recorded, by a sampler seeded for it.
        self._for(trial).after_trial(study, trial, state, values)

    def reseed_rng(self) -> None:
        self._inner.reseed_rng()


def sampler(study: TuningStudy) -> BaseSampler:
    """The study's sampler, reseeded per trial (see the module docstring)."""
    return TrialSeededSampler(lambda seed: _build_sampler(study, seed), study.seed)


def pruner(study: TuningStudy) -> optuna.pruners.BasePruner:
    """The study's pruner; epochs are its steps, validation accuracy its value."""
    if study.pruner == "median":
        # Two finished trials before any pruning, and never in the first epoch: early epochs
        # of a warm-up are noise.
        return optuna.pruners.MedianPruner(n_startup_trials=2, n_warmup_steps=1)
    if study.pruner == "hyperband":
        return optuna.pruners.HyperbandPruner(
            min_resource=1, max_resource=study.config.train.epochs
        )
    return optuna.pruners.NopPruner()
