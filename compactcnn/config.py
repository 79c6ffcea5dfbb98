"""Typed run configuration: dataclasses loaded from YAML, with `--set a.b=value` overrides.

Every section is a dataclass, so a typo in a key or a value of the wrong type is caught before any
work starts, with a one-line error that names the key. The resolved config is written to
`<run>/config.yaml`, so a run directory always says exactly what produced it.
"""

from __future__ import annotations

import dataclasses
import os
import re
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from compactcnn.errors import UserError

# The Keras policies a run can train under; `auto` picks one of them for the hardware.
POLICIES = ("float32", "mixed_float16", "mixed_bfloat16")
PRECISIONS = ("auto", *POLICIES)
PRUNE_SCHEDULES = ("none", "constant", "polynomial")
LR_SCHEDULES = ("constant", "step", "cosine", "onecycle")
WEIGHT_DECAY_FORMS = ("gradient", "decoupled")
EXPORT_FORMATS = ("float32", "float16", "dynamic_int8", "int8")
CLUSTER_GRADIENTS = ("sum", "average")
STRATEGIES = ("auto", "one_device", "mirrored", "multi_worker")
RESIZE_MODES = ("bilinear", "crop", "reject")
_FLOAT_PATTERN = re.compile(r"[-+]?(\d+\.?\d*|\.\d+)([eE][-+]?\d+)?")
# Run directories record derived values (global batch, scaled rate) under this key of config.yaml.
RESOLVED_KEY = "resolved"


@dataclass
class NormalizeConfig:
    """The input normalization prepended to a model that has none of its own.

    Leave every key unset for the built-in models' mapping of pixels 0-255 to [-1, 1]. Either
    `scale` (and `offset`) or `mean` and `std` (per channel, in pixel units 0-255); the model
    then computes `pixels * scale + offset` or `(pixels - mean) / std` in its first layer, so the
    exported files still take raw pixels.

    Attributes:
        scale: Pixel multiplier, e.g. 0.00392157 (1/255) for inputs in [0, 1].
        offset: Added after `scale` (default 0).
        mean: Channel means in pixel units, e.g. [125.3, 123.0, 113.9] (with `std`).
        std: Channel standard deviations in pixel units, e.g. [63.0, 62.1, 66.7].
    """

    scale: float | None = None
    offset: float | None = None
    mean: list[float] | None = None
    std: list[float] | None = None


@dataclass
class DataConfig:
    """Where the images come from and how they are fed.

    Attributes:
        name: One of cifar10, cifar100, imagefolder, sample, synthetic.
        path: A local archive or folder. For cifar10/100 it overrides the download; for
            imagefolder it is required (folder or .tar/.tar.gz with train/ and test/).
        image_size: [height, width] every image is brought to; null means the model's own
            input size (a saved or built model), or 32x32 (the built-in CIFAR models).
        resize: What to do with an image of another size: `bilinear` (stretch to the size),
            `crop` (scale to cover the size, keeping the aspect ratio, then cut the centre) or
            `reject` (a one-line error naming the image).
        normalize: The input normalization prepended to a model that has none (see
            `NormalizeConfig`); an error for a model that normalizes its input itself.
        augment: Pad-4 random crop and horizontal flip on training batches.
        cutout: Side of the square cut out of each training image (0 disables it).
        validation_size: Training images held out as a validation set (0 disables it).
        label_mode: CIFAR-100 only: `fine` (100 classes) or `coarse` (20 superclasses).
        train_limit: Use at most this many training images (0 means all). For quick trials.
        test_limit: Use at most this many test images (0 means all).
        synthetic_size: Images per split for the synthetic source.
        synthetic_classes: Classes for the synthetic source.
    """

    name: str = "sample"
    path: str | None = None
    image_size: list[int] | None = None
    resize: str = "bilinear"
    normalize: NormalizeConfig = field(default_factory=NormalizeConfig)
    augment: bool = True
    cutout: int = 0
    validation_size: int = 0
    label_mode: str = "fine"
    train_limit: int = 0
    test_limit: int = 0
    synthetic_size: int = 256
    synthetic_classes: int = 10


@dataclass
class ModelConfig:
    """Which architecture to build.

    Attributes:
        name: A registered model name, e.g. resnet20 (see `compactcnn.models.list_models`); a
            saved Keras 2 model, `path/to/model.keras` (its weights are the starting point); or
            a builder, `my_package.my_module:build`, called as `build(num_classes=...,
            input_shape=(height, width, 3))` and returning a Functional tf_keras model.
        zero_init_residual: Start the last BatchNormalization scale of every residual branch at
            zero, so each block begins as the identity (Goyal et al. 2017). Built-in models.
        width: Width multiplier of the built-in MobileNets (null means the model's own, e.g.
            0.25 for mobilenet_v1_025).
    """

    name: str = "resnet20"
    zero_init_residual: bool = False
    width: float | None = None


@dataclass
class TrainConfig:
    """Optimizer, schedule and loop settings.

    Attributes:
        epochs: Passes over the training set.
        batch_size: Images per replica per step; the global batch is this times the replicas.
        precision: float32, mixed_float16, mixed_bfloat16, or auto: mixed_bfloat16 where the
            hardware computes bfloat16 natively (CPUs with AVX512-BF16 or AMX, NVIDIA compute
            capability >= 8.0), mixed_float16 on older NVIDIA GPUs, float32 otherwise.
        learning_rate: Peak learning rate for the reference batch of 128 images (scaled linearly
            with the global batch when `scale_learning_rate` is on).
        lr_schedule: constant, step (He et al.: /10 at 50% and 75%), cosine or onecycle.
        warmup_epochs: Linear warm-up from 0 to the peak, in epochs (at most a fifth of training).
        momentum: SGD momentum.
        nesterov: Use Nesterov momentum.
        weight_decay: Weight decay coefficient on conv and dense kernels (see
            `weight_decay_form`; BN scales/offsets and biases are left alone unless
            `decay_all_weights`).
        weight_decay_form: `gradient` adds `weight_decay * w` to each gradient before momentum
            (classic L2, as PyTorch's SGD `weight_decay`; Keras `l2(c)` equals `2c` here);
            `decoupled` shrinks weights by `learning_rate * weight_decay` per step after the
            update (Loshchilov & Hutter), about 10x weaker than `gradient` at momentum 0.9.
            Both live in the optimizer, so pruning-, clustering- and QAT-wrapped kernels decay.
        decay_all_weights: Also decay BN scales/offsets and biases.
        label_smoothing: Label smoothing of the cross-entropy loss.
        scale_learning_rate: Linear scaling rule: multiply the rate by global_batch / 128.
        bn_recalibration_batches: After training, recompute every BatchNormalization layer's
            moving statistics as the exact average over this many augmented training batches,
            with the final weights; 0 disables it. The moving averages that training keeps lag
            behind weights that changed fast (pruning, short fine-tunes): a 70%-pruned 4-epoch
            run scored 19% with them and 100% after recalibration. Augmented, as training saw
            them: unaugmented images cost a dense 10-epoch ResNet-20 2.2 points (see
            `train.recalibrate_batchnorm`). The QAT model is recalibrated too, after its
            fine-tune.
        steps_per_epoch: Limit the steps per epoch (0 means a full pass).
        seed: Seed for weights, shuffling and augmentation.
    """

    epochs: int = 10
    batch_size: int = 128
    precision: str = "auto"
    learning_rate: float = 0.2
    lr_schedule: str = "cosine"
    warmup_epochs: float = 1.0
    momentum: float = 0.9
    nesterov: bool = True
    weight_decay: float = 1e-3
    weight_decay_form: str = "gradient"
    decay_all_weights: bool = False
    label_smoothing: float = 0.1
    scale_learning_rate: bool = True
    bn_recalibration_batches: int = 50
    steps_per_epoch: int = 0
    seed: int = 0


@dataclass
class PruneCapsConfig:
    """Highest per-layer target of small, sensitive layers under a non-uniform allocation.

    null means no cap of its own (every layer is capped at 0.99 anyway). See
    `compactcnn.allocation.layer_roles` for how the roles are found.

    Attributes:
        stem: The first kernel layer of the model (it sees the image).
        shortcut: 1x1 Conv2D layers named `*shortcut*` (the ResNets' projection shortcuts).
        classifier: The last kernel layer when it is a Dense (the logits).
    """

    stem: float | None = 0.5
    shortcut: float | None = 0.5
    classifier: float | None = 0.5


@dataclass
class PruneConfig:
    """Magnitude pruning with tfmot (Zhu & Gupta 2017).

    Attributes:
        schedule: none, constant or polynomial.
        initial_sparsity: Sparsity at `begin_epoch` (polynomial only).
        final_sparsity: Target sparsity in [0, 1); with a non-uniform `allocation`, the
            parameter-weighted mean of the per-layer targets.
        begin_epoch: Epoch at which pruning starts (fractional epochs allowed).
        end_epoch: Epoch at which the target is reached; null means 75% of training.
        frequency: Steps between mask updates.
        power: Exponent of the polynomial decay.
        m_by_n: Structured sparsity, e.g. [2, 4]: 2 zeros in every 4 input channels.
        exclude: Regular expressions of layer names to leave dense.
        from_run: A finished run directory or a model.keras file to fine-tune from.
        allocation: How `final_sparsity` becomes per-layer targets (see
            `compactcnn.allocation`): `uniform` (every layer the same), `global_magnitude`
            (what one magnitude threshold over all kernels of the `from_run` weights gives)
            or `sensitivity` (more to layers whose accuracy suffers least, from a
            `compactcnn sensitivity` CSV).
        sensitivity_file: The sensitivity.csv the `sensitivity` allocation reads; null means
            the one in the `from_run` run directory.
        caps: Per-layer caps of the non-uniform allocations (see `PruneCapsConfig`).
    """

    schedule: str = "none"
    initial_sparsity: float = 0.0
    final_sparsity: float = 0.5
    begin_epoch: float = 0.0
    end_epoch: float | None = None
    frequency: int = 100
    power: float = 3.0
    m_by_n: list[int] | None = None
    exclude: list[str] = field(default_factory=list)
    from_run: str | None = None
    allocation: str = "uniform"
    sensitivity_file: str | None = None
    caps: PruneCapsConfig = field(default_factory=PruneCapsConfig)


@dataclass
class QuantizeConfig:
    """TFLite export and quantization.

    Attributes:
        formats: Any of float32, float16, dynamic_int8, int8.
        calibration_samples: Training images for the int8 representative dataset.
        int8_io: Input/output type of the full-integer model: uint8, int8 or float32.
        qat: Fine-tune with quantization-aware training before the int8 export (prune- and
            cluster-preserving when the model is pruned or clustered).
        qat_epochs: Epochs of quantization-aware fine-tuning.
        qat_learning_rate: Learning rate of the QAT fine-tuning.
        sparsity_optimization: Add tf.lite.Optimize.EXPERIMENTAL_SPARSITY to every conversion.
        weight_clusters: Share this many weight values per layer (tfmot sparsity-preserving
            clustering, fine-tuned for `cluster_epochs`) before export; 0 disables it. With 16
            clusters a 70%-sparse int8 ResNet-20 gzips about 20% smaller. With `qat`, the QAT
            fine-tune keeps the shared values and zeros (tfmot's PCQAT).
        cluster_epochs: Epochs of fine-tuning with clustered weights.
        cluster_learning_rate: Learning rate of that fine-tuning.
        cluster_gradient: How a shared value's gradient is formed from those of the weights
            that share it: `sum` (tfmot's default) or `average` (tfmot's AVG aggregation).
            Summed, a centroid shared by hundreds of weights can move up to hundreds of times
            faster than one weight at the same rate; use `average` (at a rate near 0.01) for more
            than one clustering epoch.
        short_tensor_names: Rename every tensor of each exported file but the model's inputs
            and outputs to its index (`t17`): the converter's names (`model/quant_conv2d/
            Conv2D;model/quant_conv2d/LastValueQuant/...`) are 8.6 KB of a ResNet-20 int8 file
            that nothing reads at inference. The signature and the input and output names stay;
            tools that show tensor names (Netron, the quantization debugger) show indices.
    """

    formats: list[str] = field(default_factory=lambda: list(EXPORT_FORMATS))
    calibration_samples: int = 500
    int8_io: str = "uint8"
    qat: bool = False
    qat_epochs: int = 1
    qat_learning_rate: float = 0.001
    sparsity_optimization: bool = False
    weight_clusters: int = 0
    cluster_epochs: int = 1
    cluster_learning_rate: float = 0.001
    cluster_gradient: str = "sum"
    short_tensor_names: bool = False


@dataclass
class DistillConfig:
    """Knowledge distillation from a trained teacher (Hinton et al. 2015; see compactcnn.distill).

    With a teacher, the student is trained on (1 - alpha) * CE(labels, student) + alpha * T^2 *
    KL(softmax(teacher / T) || softmax(student / T)), where CE is the run's own loss (with
    `train.label_smoothing`) and teacher/student are logits (log of the softmax outputs). It
    applies to every training of the run: from scratch, `prune.from_run` fine-tuning, and the
    clustering and QAT fine-tunes. Only the student is exported.

    Attributes:
        teacher: A finished run directory (its model.keras) or a .keras file of a model with
            the run's image size and classes, ending in a softmax; null or "" turns
            distillation off.
        alpha: Weight of the distillation term, in [0, 1] (0 is plain training).
        temperature: Softmax temperature T of both distributions, > 0; higher is softer.
    """

    teacher: str | None = None
    # The defaults of the CIFAR benchmark of distillation, RepDistiller (Tian et al. 2020, its
    # KD baseline: classification weight 0.1, KD weight 0.9, T = 4); Hinton et al. 2015 also put
    # most weight on the soft targets, whose T^2-scaled gradients then match the hard ones.
    alpha: float = 0.9
    temperature: float = 4.0


@dataclass
class DistributeConfig:
    """Where training runs.

    Attributes:
        strategy: auto, one_device, mirrored or multi_worker.
        devices: Explicit devices for one_device/mirrored, e.g. ["/gpu:0", "/gpu:1"].
        cpu_devices: Split the CPU into this many logical devices (0 leaves it alone). For tests.
        save_freq: BackupAndRestore frequency in steps (0 means at every epoch end).
    """

    strategy: str = "auto"
    devices: list[str] = field(default_factory=list)
    cpu_devices: int = 0
    save_freq: int = 0


@dataclass
class OutputConfig:
    """What is measured and written.

    Attributes:
        dir: Parent folder of run directories when `--out` is not given.
        latency_runs: Batch-1 invocations timed per TFLite file.
        threads: Interpreter threads for TFLite evaluation and latency.
        tensorboard: Write TensorBoard logs.
    """

    dir: str = "runs"
    latency_runs: int = 50
    threads: int = 2
    tensorboard: bool = True


@dataclass
class Config:
    """The whole run."""

    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    prune: PruneConfig = field(default_factory=PruneConfig)
    quantize: QuantizeConfig = field(default_factory=QuantizeConfig)
    distill: DistillConfig = field(default_factory=DistillConfig)
    distribute: DistributeConfig = field(default_factory=DistributeConfig)
    output: OutputConfig = field(default_factory=OutputConfig)


def _coerce(value: Any, annotation: Any, key: str) -> Any:
    """Checks `value` against a field annotation, converting only lossless cases (int -> float)."""
    origin = typing.get_origin(annotation)
    if origin in (typing.Union, types.UnionType):
        options = typing.get_args(annotation)
        if value is None and type(None) in options:
            return None
        for option in options:
            if option is type(None):
                continue
            try:
                return _coerce(value, option, key)
            except UserError:
                continue
        raise UserError(f"config key '{key}': expected {_type_name(annotation)}, got {value!r}")
    if origin is list:
        (item_type,) = typing.get_args(annotation)
        if not isinstance(value, list):
            raise UserError(f"config key '{key}': expected a list, got {value!r}")
        return [_coerce(item, item_type, f"{key}[{i}]") for i, item in enumerate(value)]
    if annotation is bool:
        if isinstance(value, bool):
            return value
    elif annotation is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    elif annotation is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        if isinstance(value, str) and _FLOAT_PATTERN.fullmatch(value.strip()):
            # YAML 1.1 reads `5e-4` (no dot) as a string; everyone means the number.
            return float(value)
    elif annotation is str:
        if isinstance(value, str):
            return value
    else:
        return value
    raise UserError(f"config key '{key}': expected {_type_name(annotation)}, got {value!r}")


def _type_name(annotation: Any) -> str:
    return getattr(annotation, "__name__", None) or str(annotation).replace("typing.", "")


def _build(cls: type, values: Any, prefix: str) -> Any:
    if values is None:
        values = {}
    if not isinstance(values, dict):
        raise UserError(
            f"config section '{prefix or 'top level'}' must be a mapping, got {values!r}"
        )
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(values) - set(fields))
    if unknown:
        key = f"{prefix}.{unknown[0]}" if prefix else unknown[0]
        raise UserError(f"unknown config key '{key}'; valid keys here: {', '.join(sorted(fields))}")
    kwargs = {}
    hints = typing.get_type_hints(cls)
    for name, value in values.items():
        key = f"{prefix}.{name}" if prefix else name
        if dataclasses.is_dataclass(hints[name]):
            kwargs[name] = _build(hints[name], value, key)
        else:
            kwargs[name] = _coerce(value, hints[name], key)
    return cls(**kwargs)


def from_dict(values: dict[str, Any]) -> Config:
    """Builds and validates a Config from plain nested values.

    Raises:
        UserError: On an unknown key, a wrong type or an invalid value.
    """
    values = {key: value for key, value in values.items() if key != RESOLVED_KEY}
    config = _build(Config, values, "")
    validate(config)
    return config


def to_dict(config: Config) -> dict[str, Any]:
    """Returns the config as plain nested values, ready for YAML or JSON."""
    return dataclasses.asdict(config)


def parse_override(text: str) -> tuple[str, Any]:
    """Splits `a.b=value` and parses the value as YAML, so `true`, `3`, `[2, 4]` get their types."""
    if "=" not in text:
        raise UserError(f"--set '{text}' is not of the form section.key=value")
    key, raw = text.split("=", 1)
    key = key.strip()
    try:
        value = yaml.safe_load(raw) if raw.strip() else None
    except yaml.YAMLError:
        value = raw
    # A bare word that YAML reads as something else (e.g. `on`) stays as the user wrote it only
    # when the field wants a string; _coerce sorts that out.
    return key, value


def apply_overrides(values: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """Applies `a.b=value` overrides to nested values, in order."""
    for text in overrides:
        key, value = parse_override(text)
        parts = key.split(".")
        node = values
        for part in parts[:-1]:
            child = node.setdefault(part, {})
            if not isinstance(child, dict):
                raise UserError(f"--set {key}: '{part}' is not a config section")
            node = child
        node[parts[-1]] = _string_if_wanted(key, value)
    return values


def _string_if_wanted(key: str, value: Any) -> Any:
    """Keeps `--set data.path=123` a string when the field is a string, as the user meant."""
    hint: Any = Config
    for part in key.split("."):
        if not (isinstance(hint, type) and dataclasses.is_dataclass(hint)):
            return value
        hints = typing.get_type_hints(hint)
        if part not in hints:
            return value  # _build reports the unknown key with the valid choices.
        hint = hints[part]
    wants_str = hint is str or (
        typing.get_origin(hint) in (typing.Union, types.UnionType) and str in typing.get_args(hint)
    )
    if wants_str and isinstance(value, (int, float, bool)):
        return str(value).lower() if isinstance(value, bool) else str(value)
    return value


def read_yaml(path: Path, kind: str) -> Any:
    """Parses a YAML file, with one-line errors naming `kind` (e.g. "study file") and the path.

    Raises:
        UserError: When the file is missing or is not valid YAML.
    """
    if not path.is_file():
        raise UserError(f"{kind} '{path}' not found; pass the path of a YAML file")
    try:
        text = path.read_text(encoding="utf-8")
    except (UnicodeDecodeError, OSError) as error:
        raise UserError(
            f"{kind} '{path}' is not a readable UTF-8 text file ({error.__class__.__name__}); "
            "pass a YAML file"
        ) from None
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError as error:
        first_line = str(error).splitlines()[0]
        raise UserError(f"{kind} '{path}' is not valid YAML: {first_line}") from None


def read_study_file(
    study_path: Path,
    valid_keys: tuple[str, ...],
    kind: str,
    hints: dict[str, str] | None = None,
) -> tuple[dict[str, Any], Path, dict[str, Any]]:
    """Reads what sweep and tuning study files share: the keys, `base` and `set`.

    Args:
        study_path: The study YAML.
        valid_keys: The keys this kind of study accepts.
        kind: "study" or "tuning study", for messages.
        hints: Unknown key -> text appended to its error (e.g. where that key belongs instead).

    Returns:
        (the whole mapping, the absolute base config path, the `set:` overrides).

    Raises:
        UserError: On a missing or malformed file, an unknown key, or a missing base config.
    """
    study = read_yaml(study_path, "study file")
    if not isinstance(study, dict):
        raise UserError(f"study file '{study_path}' must be a mapping with 'base' and more keys")
    unknown = sorted(set(study) - set(valid_keys))
    if unknown:
        raise UserError(
            f"unknown {kind} key '{unknown[0]}' in '{study_path}'; "
            f"valid keys: {', '.join(valid_keys)}{(hints or {}).get(unknown[0], '')}"
        )
    if not isinstance(study.get("base"), str):
        raise UserError(f"study '{study_path}' needs 'base: <config.yaml>' (relative to the study)")
    base = (study_path.parent / study["base"]).resolve()
    if not base.is_file():
        raise UserError(f"study base config '{base}' not found; fix 'base' in '{study_path}'")
    fixed = study.get("set") or {}
    if not isinstance(fixed, dict):
        raise UserError(f"study key 'set' must map config keys to values, got {fixed!r}")
    return study, base, fixed


def load_config(path: str | os.PathLike | None, overrides: list[str] | None = None) -> Config:
    """Loads a YAML config file (or the defaults when `path` is None) and applies overrides.

    Raises:
        UserError: When the file is missing or unreadable, or any key or value is invalid.
    """
    values: dict[str, Any] = {}
    if path is not None:
        path = Path(path)
        loaded = read_yaml(path, "config file")
        if loaded is not None and not isinstance(loaded, dict):
            raise UserError(f"config file '{path}' must hold a mapping of sections")
        values = loaded or {}
    return from_dict(apply_overrides(values, overrides or []))


def save_config(
    config: Config, path: str | os.PathLike, resolved: dict[str, Any] | None = None
) -> None:
    """Writes the config as YAML, atomically.

    Args:
        config: The config to write.
        path: Destination file.
        resolved: Values derived at run time (e.g. the global batch), written under a top-level
            `resolved:` key for the record; loading the file back ignores them.
    """
    values = to_dict(config)
    if resolved:
        values[RESOLVED_KEY] = resolved
    from compactcnn import files  # imported here: files is a leaf, config is imported first

    files.write_text(path, yaml.safe_dump(values, sort_keys=False))


def _check_choice(key: str, value: str, choices: tuple[str, ...]) -> None:
    if value not in choices:
        raise UserError(f"config key '{key}': '{value}' is not one of {', '.join(choices)}")


def validate(config: Config) -> None:
    """Checks values that types alone cannot, with one clear line per problem.

    Raises:
        UserError: On the first invalid value.
    """
    from compactcnn.data import list_sources  # here: compactcnn.data imports this module

    _check_choice("data.name", config.data.name, tuple(list_sources()))
    _check_choice("data.label_mode", config.data.label_mode, ("fine", "coarse"))
    _check_choice("data.resize", config.data.resize, RESIZE_MODES)
    _check_choice("train.precision", config.train.precision, PRECISIONS)
    _check_choice("train.lr_schedule", config.train.lr_schedule, LR_SCHEDULES)
    _check_choice("train.weight_decay_form", config.train.weight_decay_form, WEIGHT_DECAY_FORMS)
    _check_choice("prune.schedule", config.prune.schedule, PRUNE_SCHEDULES)
    _check_choice("distribute.strategy", config.distribute.strategy, STRATEGIES)
    _check_choice("quantize.int8_io", config.quantize.int8_io, ("uint8", "int8", "float32"))
    _check_choice("quantize.cluster_gradient", config.quantize.cluster_gradient, CLUSTER_GRADIENTS)
    for name in config.quantize.formats:
        _check_choice("quantize.formats", name, EXPORT_FORMATS)
    if config.data.name == "imagefolder" and not config.data.path:
        raise UserError("data.name 'imagefolder' needs data.path: a folder or .tar.gz with train/")
    positive = {
        "train.epochs": config.train.epochs,
        "train.batch_size": config.train.batch_size,
        "prune.frequency": config.prune.frequency,
        "quantize.calibration_samples": config.quantize.calibration_samples,
        "output.latency_runs": config.output.latency_runs,
        "output.threads": config.output.threads,
    }
    for key, value in positive.items():
        if value < 1:
            raise UserError(f"config key '{key}' must be at least 1, got {value}")
    non_negative = {
        "data.cutout": config.data.cutout,
        "data.validation_size": config.data.validation_size,
        "data.train_limit": config.data.train_limit,
        "data.test_limit": config.data.test_limit,
        "train.learning_rate": config.train.learning_rate,
        "train.warmup_epochs": config.train.warmup_epochs,
        "train.weight_decay": config.train.weight_decay,
        "train.steps_per_epoch": config.train.steps_per_epoch,
        "train.bn_recalibration_batches": config.train.bn_recalibration_batches,
        "quantize.qat_epochs": config.quantize.qat_epochs,
        "quantize.cluster_epochs": config.quantize.cluster_epochs,
        "distribute.cpu_devices": config.distribute.cpu_devices,
        "distribute.save_freq": config.distribute.save_freq,
    }
    for key, value in non_negative.items():
        if value < 0:
            raise UserError(f"config key '{key}' must not be negative, got {value}")
    if not 0.0 <= config.train.label_smoothing < 1.0:
        raise UserError("config key 'train.label_smoothing' must be in [0, 1)")
    if config.quantize.weight_clusters and not 3 <= config.quantize.weight_clusters <= 256:
        # tfmot refuses 2 when it keeps the zero cluster: one shared value besides zero.
        raise UserError(
            "config key 'quantize.weight_clusters' must be 0 (off) or 3 to 256 (zero is one "
            f"of the clusters), got {config.quantize.weight_clusters}"
        )
    if config.model.width is not None and config.model.width <= 0:
        raise UserError(f"config key 'model.width' must be positive, got {config.model.width}")
    _validate_image_size(config.data.image_size)
    _validate_normalize(config.data.normalize)
    _validate_prune(config.prune, config.train.epochs)
    _validate_distill(config.distill)


# Smaller images leave nothing for a CNN's strided layers; larger ones do not fit in memory.
IMAGE_SIZE_LIMITS = (8, 2048)


def _validate_image_size(image_size: list[int] | None) -> None:
    if image_size is None:
        return
    low, high = IMAGE_SIZE_LIMITS
    if len(image_size) != 2 or not all(low <= side <= high for side in image_size):
        raise UserError(
            f"config key 'data.image_size' must be [height, width] with sides {low} to {high}, "
            f"got {image_size}; e.g. data.image_size=[96, 96]"
        )


def _validate_distill(distill: DistillConfig) -> None:
    if not 0.0 <= distill.alpha <= 1.0:
        raise UserError(
            f"config key 'distill.alpha' must be in [0, 1], got {distill.alpha}; e.g. 0.9 "
            "(the weight of the teacher's soft targets)"
        )
    if distill.temperature <= 0:
        raise UserError(
            f"config key 'distill.temperature' must be positive, got {distill.temperature}; e.g. 4"
        )


def _validate_normalize(normalize: NormalizeConfig) -> None:
    by_scale = normalize.scale is not None or normalize.offset is not None
    by_moments = normalize.mean is not None or normalize.std is not None
    if by_scale and by_moments:
        raise UserError(
            "data.normalize sets both scale/offset and mean/std; keep one of the two forms"
        )
    if normalize.scale == 0:
        raise UserError("config key 'data.normalize.scale' must not be 0; e.g. 0.00392157 (1/255)")
    if by_moments:
        mean, std = normalize.mean, normalize.std
        if mean is None or std is None or len(mean) != len(std) or len(mean) not in (1, 3):
            raise UserError(
                "data.normalize needs mean and std together, each 1 or 3 values (pixel units), "
                "e.g. mean: [125.3, 123.0, 113.9], std: [63.0, 62.1, 66.7]"
            )
        if any(value <= 0 for value in std):
            raise UserError(f"config key 'data.normalize.std' must be positive, got {std}")


def _validate_prune(prune: PruneConfig, epochs: int) -> None:
    for key in ("initial_sparsity", "final_sparsity"):
        value = getattr(prune, key)
        if not 0.0 <= value < 1.0:
            raise UserError(
                f"config key 'prune.{key}' must be in [0, 1), got {value}; "
                "use e.g. 0.7 for 70% zeros"
            )
    from compactcnn import allocation  # on use, as compactcnn.data in validate()

    allocation.check_config(prune)
    if prune.schedule == "none":
        return
    if prune.schedule == "polynomial" and prune.initial_sparsity > prune.final_sparsity:
        raise UserError("prune.initial_sparsity must not exceed prune.final_sparsity")
    if prune.begin_epoch < 0:
        raise UserError(f"prune.begin_epoch must not be negative, got {prune.begin_epoch}")
    end = prune.end_epoch if prune.end_epoch is not None else 0.75 * epochs
    if end <= prune.begin_epoch:
        raise UserError(
            f"prune.end_epoch ({end}) must be after prune.begin_epoch ({prune.begin_epoch})"
        )
    if end > epochs:
        raise UserError(
            f"prune.end_epoch ({end}) is past the end of training (train.epochs={epochs}); "
            "lower it or train longer"
        )
    if prune.power <= 0:
        raise UserError(f"prune.power must be positive, got {prune.power}")
    if prune.m_by_n is not None and (
        len(prune.m_by_n) != 2 or not 0 < prune.m_by_n[0] < prune.m_by_n[1]
    ):
        raise UserError(f"prune.m_by_n must be [m, n] with 0 < m < n, got {prune.m_by_n}")
