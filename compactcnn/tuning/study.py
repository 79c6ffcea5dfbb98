"""A tuning study file: base config, search space, objectives and budget, validated up front.

    base: ../sample_scratch.yaml            # relative to the study file
    set: {train.epochs: 2}              # optional, applied to every trial
    space:                              # any config key
      train.learning_rate: {float: [0.02, 0.3], log: true}
      prune.final_sparsity: {float: [0.5, 0.9], step: 0.05}
      train.batch_size: {int: [32, 128], step: 32}
      model.name: {choice: [resnet20, resnet32]}   # or just [resnet20, resnet32]
    objectives:                         # metric of metrics.json (dotted) -> maximize | minimize
      tflite.int8.accuracy: maximize
      tflite.int8.gzip_bytes: minimize
    max_bytes: 100000                   # optional: the first objective's file must fit
    trials: 20
    sampler: tpe                        # tpe | nsga2 | random
    seed: 0
    pruner: none                        # none | median | hyperband (one objective only)

Everything is checked before a trial starts: every space key against the config (with the
range ends and each choice), ranges and steps, every objective against the metrics a run of this
study reports. Nothing here imports Optuna, so `vertex tune` reads the same file without it.
"""

from __future__ import annotations

import itertools
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from compactcnn.config import EXPORT_FORMATS, Config, load_config, read_study_file, to_dict
from compactcnn.errors import UserError

STUDY_KEYS = (
    "base",
    "description",
    "set",
    "space",
    "objectives",
    "max_bytes",
    "trials",
    "sampler",
    "seed",
    "pruner",
)
SAMPLERS = ("tpe", "nsga2", "random")
PRUNERS = ("none", "median", "hyperband")
GOALS = ("maximize", "minimize")
KINDS = ("float", "int", "choice")
# Corners of the other searched keys tried with a value the base config rejects.
MAX_CORNER_COMBINATIONS = 256
# What `evaluate.evaluate_tflite` and `run.export_and_measure` write per file that is a number.
FILE_METRICS = (
    "accuracy",
    "bytes",
    "gzip_bytes",
    "latency_ms",
    "agreement",
    "zeros_fraction",
    "compression_bytes",
    "compression_gzip",
)
RUN_METRICS = (
    "keras.test_accuracy",
    "keras.test_loss",
    "keras.params",
    "train.seconds",
    "train.images_per_second",
    "train.final_loss",
    "train.final_accuracy",
)


@dataclass(frozen=True)
class Param:
    """One dimension of the search space.

    Attributes:
        key: The dotted config key, e.g. `train.learning_rate`.
        kind: `float`, `int` or `choice`.
        low: Smallest value of a range (inclusive).
        high: Largest value of a range (inclusive).
        log: Sample the range on a log scale.
        step: Spacing of the values of a range, or None for any value.
        choices: The values of a `choice`.
    """

    key: str
    kind: str
    low: float | int | None = None
    high: float | int | None = None
    log: bool = False
    step: float | int | None = None
    choices: tuple = ()

    def to_dict(self) -> dict[str, Any]:
        """The entry as it is written in a study file."""
        if self.kind == "choice":
            return {"choice": list(self.choices)}
        entry: dict[str, Any] = {self.kind: [self.low, self.high]}
        if self.log:
            entry["log"] = True
        if self.step is not None:
            entry["step"] = self.step
        return entry

    def corners(self) -> list[Any]:
        """The values that bound the space: both range ends, or every choice."""
        return list(self.choices) if self.kind == "choice" else [self.low, self.high]


@dataclass(frozen=True)
class Objective:
    """A metric of the run's metrics.json (dotted, e.g. `tflite.int8.accuracy`) and its goal."""

    metric: str
    goal: str


@dataclass
class TuningStudy:
    """A validated tuning study.

    Attributes:
        path: The study file.
        base: Absolute path of the base config.
        fixed: The `set:` overrides applied to every trial.
        space: The searched keys, in file order.
        objectives: What the search optimizes, in file order.
        max_bytes: Largest allowed `bytes` of the first objective's file, or None.
        trials: Trials to finish (complete, pruned or failed) in the study.
        sampler: tpe, nsga2 or random.
        seed: Seed of the sampler (each trial's sampler is seeded from seed and trial number).
        pruner: none, median or hyperband.
        description: Free text.
        config: The base config with `set:` applied (the space keys at their base values).
    """

    path: Path
    base: Path
    fixed: dict[str, Any]
    space: list[Param]
    objectives: list[Objective]
    max_bytes: float | None
    trials: int
    sampler: str
    seed: int
    pruner: str
    description: str = ""
    config: Config = field(default_factory=Config, repr=False)

    @property
    def directions(self) -> list[str]:
        """The goal of each objective, in order."""
        return [objective.goal for objective in self.objectives]

    @property
    def budget_metric(self) -> str | None:
        """The metric `max_bytes` limits: the `bytes` of the first objective's file."""
        if self.max_bytes is None:
            return None
        return f"tflite.{_file_format(self.objectives[0].metric)}.bytes"

    def overrides(self, values: dict[str, Any]) -> list[str]:
        """`key=value` texts of the fixed keys and then `values` (one trial's parameters)."""
        from compactcnn.sweep import format_value  # The one writer of `--set` values.

        merged = {**self.fixed, **values}
        return [f"{key}={format_value(value)}" for key, value in merged.items()]

    def to_dict(self) -> dict[str, Any]:
        """The study as plain values (for tune.yaml and the record kept in the storage)."""
        return {
            "study": str(self.path.resolve()),
            "base": str(self.base),
            "description": self.description,
            "set": self.fixed,
            "space": {param.key: param.to_dict() for param in self.space},
            "objectives": {objective.metric: objective.goal for objective in self.objectives},
            "max_bytes": self.max_bytes,
            "trials": self.trials,
            "sampler": self.sampler,
            "seed": self.seed,
            "pruner": self.pruner,
        }

    def fingerprint(self) -> dict[str, Any]:
        """What a shared study must agree on: the trials' config, space and objectives.

        The budget, sampler and seed may change between launches (a study can be extended).
        """
        config = to_dict(self.config)
        config.pop("output", None)  # Cannot change a result (ownership.RESULT_NEUTRAL_KEYS).
        return {
            "config": config,
            "space": {param.key: param.to_dict() for param in self.space},
            "objectives": [[o.metric, o.goal] for o in self.objectives],
            "max_bytes": self.max_bytes,
        }


def _file_format(metric: str) -> str | None:
    parts = metric.split(".")
    if len(parts) == 3 and parts[0] == "tflite" and parts[1] in EXPORT_FORMATS:
        return parts[1]
    return None


def _number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def parse_param(key: str, entry: Any) -> Param:
    """Reads one `space:` entry: `{float|int: [low, high], log, step}`, `{choice: [...]}` or a list.

    Raises:
        UserError: On a malformed entry, low > high, a non-positive log range or step.
    """
    example = f"e.g. '{key}: {{float: [0.01, 0.1], log: true}}' or '{key}: {{choice: [a, b]}}'"
    if isinstance(entry, list):
        entry = {"choice": entry}
    if not isinstance(entry, dict):
        raise UserError(f"search space key '{key}' must be a range or a choice, {example}")
    kinds = [kind for kind in KINDS if kind in entry]
    unknown = sorted(set(entry) - {*KINDS, "log", "step"})
    if len(kinds) != 1 or unknown:
        raise UserError(
            f"search space key '{key}' needs exactly one of float, int, choice (plus log, step), "
            f"got {sorted(entry)}; {example}"
        )
    kind = kinds[0]
    if kind == "choice":
        choices = entry["choice"]
        if not isinstance(choices, list) or not choices or {"log", "step"} & set(entry):
            raise UserError(f"search space key '{key}': 'choice' must be a non-empty list alone")
        return Param(key, "choice", choices=tuple(choices))
    bounds, log, step = entry[kind], entry.get("log", False), entry.get("step")
    wanted = int if kind == "int" else (int, float)
    if (
        not isinstance(bounds, list)
        or len(bounds) != 2
        or not all(_number(b) and isinstance(b, wanted) for b in bounds)
    ):
        raise UserError(
            f"search space key '{key}': '{kind}' must be [low, high] with {kind} values, "
            f"got {bounds!r}"
        )
    low, high = bounds
    if low > high:
        raise UserError(
            f"search space key '{key}': low {low} is above high {high}; write [{high}, {low}]"
        )
    if not isinstance(log, bool):
        raise UserError(f"search space key '{key}': 'log' must be true or false, got {log!r}")
    if log and low <= 0:
        raise UserError(f"search space key '{key}': a log range needs low > 0, got {low}")
    if step is not None:
        if not _number(step) or not isinstance(step, wanted) or step <= 0:
            raise UserError(
                f"search space key '{key}': 'step' must be a positive {kind}, got {step!r}"
            )
        if log and step != 1:
            raise UserError(f"search space key '{key}': 'log' and 'step' cannot be combined")
        if high > low and step > high - low:
            # Optuna would shrink the range to its low end and warn on every trial.
            raise UserError(
                f"search space key '{key}': step {step} is wider than the range [{low}, {high}]; "
                "use a smaller step or a list of choices"
            )
    if kind == "float":
        low, high = float(low), float(high)
        step = float(step) if step is not None else None
    return Param(key, kind, low, high, log, step)


def load_tuning_study(study_path: str | os.PathLike) -> TuningStudy:
    """Reads and validates a tuning study file.

    Raises:
        UserError: On a missing or malformed file, an unknown study key, a space key that is not
            a config key (or whose range ends or choices the config rejects), a range with
            low > high, an objective that no run of the study reports, or a bad budget,
            sampler, pruner or trial count.
    """
    study_path = Path(study_path)
    hints = {"grid": "; `compactcnn sweep` runs grids"}
    study, base, fixed = read_study_file(study_path, STUDY_KEYS, "tuning study", hints)
    space_entries = study.get("space")
    if not isinstance(space_entries, dict) or not space_entries:
        raise UserError(
            f"study '{study_path}' has no search space; add e.g. "
            "'space: {train.learning_rate: {float: [0.01, 0.2], log: true}}'"
        )
    space = [parse_param(str(key), entry) for key, entry in space_entries.items()]

    from compactcnn.sweep import format_value

    fixed_overrides = [f"{key}={format_value(value)}" for key, value in fixed.items()]
    config = load_config(base, fixed_overrides)
    configs = [config]
    for param in space:
        if param.key in fixed:
            raise UserError(f"config key '{param.key}' is both in 'set' and in 'space'; keep one")
        for value in param.corners():
            configs.append(_corner_config(base, fixed_overrides, space, param, value))

    objectives = _objectives(study.get("objectives"), configs)
    max_bytes = study.get("max_bytes")
    if max_bytes is not None:
        if not _number(max_bytes) or max_bytes <= 0:
            raise UserError(f"study key 'max_bytes' must be a positive number, got {max_bytes!r}")
        if _file_format(objectives[0].metric) is None:
            raise UserError(
                "study key 'max_bytes' limits the file of the first objective, but "
                f"'{objectives[0].metric}' is no tflite.<format>.<field> metric; "
                "list a TFLite objective first"
            )
    trials = study.get("trials", 10)
    if not isinstance(trials, int) or isinstance(trials, bool) or trials < 1:
        raise UserError(f"study key 'trials' must be a positive integer, got {trials!r}")
    sampler = study.get("sampler", "tpe")
    if sampler not in SAMPLERS:
        raise UserError(f"study key 'sampler': '{sampler}' is not one of {', '.join(SAMPLERS)}")
    seed = study.get("seed", 0)
    if not isinstance(seed, int) or isinstance(seed, bool):
        raise UserError(f"study key 'seed' must be an integer, got {seed!r}")
    pruner = str(study.get("pruner", "none")).lower()
    if pruner not in PRUNERS:
        raise UserError(f"study key 'pruner': '{pruner}' is not one of {', '.join(PRUNERS)}")
    if pruner != "none":
        if len(objectives) > 1:
            raise UserError(
                "study key 'pruner' works with one objective only (Optuna cannot prune "
                "multi-objective trials); set 'pruner: none' or keep one objective"
            )
        if any(c.data.validation_size < 1 for c in configs):
            raise UserError(
                "study key 'pruner' feeds the pruner validation accuracy per epoch; "
                "set data.validation_size (e.g. 'set: {data.validation_size: 5000}')"
            )
    return TuningStudy(
        path=study_path,
        base=base,
        fixed=fixed,
        space=space,
        objectives=objectives,
        max_bytes=max_bytes,
        trials=trials,
        sampler=sampler,
        seed=seed,
        pruner=pruner,
        description=str(study.get("description") or ""),
        config=config,
    )


def study_from_record(record: dict[str, Any]) -> TuningStudy:
    """Rebuilds a study from `TuningStudy.to_dict` (tune.yaml) without reading its base config.

    The report uses it: the study file and base config may since have moved or changed.

    Raises:
        UserError: When the record is not a tuning study record.
    """
    try:
        return TuningStudy(
            path=Path(record["study"]),
            base=Path(record["base"]),
            fixed=dict(record.get("set") or {}),
            space=[parse_param(key, entry) for key, entry in record["space"].items()],
            objectives=[Objective(m, g) for m, g in record["objectives"].items()],
            max_bytes=record.get("max_bytes"),
            trials=int(record.get("trials") or 0),
            sampler=str(record.get("sampler") or "tpe"),
            seed=int(record.get("seed") or 0),
            pruner=str(record.get("pruner") or "none"),
            description=str(record.get("description") or ""),
        )
    except (KeyError, TypeError, AttributeError, ValueError) as error:
        raise UserError(
            f"the tuning record is damaged ({type(error).__name__}: {error}); run "
            "`compactcnn tune` on the folder again to rewrite it"
        ) from None


def _corner_config(
    base: Path, fixed_overrides: list[str], space: list[Param], param: Param, value: Any
) -> Config:
    """The config of one corner of the space, checked with `load_config`.

    A value that the config rejects beside the base values of the other searched keys may still
    be valid beside other values of theirs (`prune.begin_epoch` and `prune.end_epoch` searched
    together), so the other keys' corners are tried too before the value counts as an error.

    Raises:
        UserError: When the key is no config key, or the value fits no corner of the others.
    """
    from compactcnn.sweep import format_value

    override = f"{param.key}={format_value(value)}"
    try:
        return load_config(base, [*fixed_overrides, override])
    except UserError as error:
        first_error = error
    others = [other for other in space if other is not param]
    combinations = itertools.product(*(other.corners() for other in others))
    for values in itertools.islice(combinations, MAX_CORNER_COMBINATIONS):
        extra = [f"{o.key}={format_value(v)}" for o, v in zip(others, values, strict=True)]
        try:
            return load_config(base, [*fixed_overrides, *extra, override])
        except UserError:
            continue
    raise UserError(f"search space key '{param.key}' = {value!r}: {first_error}") from None


def reported_metrics(config: Config) -> list[str]:
    """The numeric metrics (dotted keys of metrics.json) a run of `config` writes."""
    metrics = list(RUN_METRICS)
    if config.data.validation_size > 0:
        metrics.append("keras.validation_accuracy")
    if config.prune.schedule != "none":
        metrics += ["pruning.overall_sparsity", "pruning.nonzero_params"]
    for file_format in config.quantize.formats:
        metrics += [f"tflite.{file_format}.{name}" for name in FILE_METRICS]
    return metrics


def _objectives(entries: Any, configs: list[Config]) -> list[Objective]:
    """Reads `objectives:`; each metric must be reported by some run of the study."""
    example = (
        "e.g. 'objectives: {tflite.int8.accuracy: maximize, tflite.int8.gzip_bytes: minimize}'"
    )
    if not isinstance(entries, dict) or not entries:
        raise UserError(f"the study needs 'objectives' mapping metrics to goals, {example}")
    reported = list(dict.fromkeys(m for config in configs for m in reported_metrics(config)))
    objectives = []
    for metric, goal in entries.items():
        goal = str(goal).lower()
        if goal not in GOALS:
            raise UserError(f"objective '{metric}': goal '{goal}' is not maximize or minimize")
        if metric not in reported:
            raise UserError(
                f"objective '{metric}' is reported by no run of this study; pick one of "
                f"{', '.join(reported)}"
            )
        objectives.append(Objective(str(metric), goal))
    return objectives
