"""Per-layer sparsity targets: how `prune.final_sparsity` is shared among the pruned layers.

tfmot prunes each wrapped layer to its own schedule's target, so a global target can be spread
unevenly. Every allocation gives targets whose parameter-weighted mean is `final_sparsity`
(within `MEAN_TOLERANCE`), each in [0, `MAX_LAYER_SPARSITY`]:

- `uniform`: every layer gets `final_sparsity` (no caps): the behaviour before allocations.
- `global_magnitude`: the per-layer sparsities that one magnitude threshold over all pruned
  kernels gives, on the weights pruning starts from. Those must be trained weights
  (`prune.from_run`): freshly initialized weights say nothing about what matters.
- `sensitivity`: more sparsity where a `compactcnn sensitivity` run measured a smaller
  accuracy drop (see `sensitivity_targets` for the rule).

The non-uniform allocations cap small, sensitive layers (`prune.caps`: stem, shortcut,
classifier; see `layer_roles`), and a target the caps make unreachable is a one-line error
before training. Strategies live in a `Registry`, so an unknown name is refused with the list.
This module loads no TensorFlow at import (the config validation imports it).
"""

from __future__ import annotations

import csv
import dataclasses
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from compactcnn import pretrained
from compactcnn.errors import UserError
from compactcnn.registry import Registry

if TYPE_CHECKING:
    from compactcnn.config import PruneConfig

# tfmot keeps at least one weight per kernel; 0.99 leaves a layer something to compute with.
MAX_LAYER_SPARSITY = 0.99
# How far the parameter-weighted mean of the targets may be from `final_sparsity`.
MEAN_TOLERANCE = 0.005
# Written by `compactcnn sensitivity` into a run directory; read by the `sensitivity` allocation.
SENSITIVITY_FILE = "sensitivity.csv"
SENSITIVITY_COLUMNS = ("layer", "parameters", "sparsity", "accuracy", "drop")
# The sensitivity rule treats each drop curve as rising at least this much per unit of sparsity,
# so equal drops (flat curves) still order the sparsities and the bisection is continuous.
_MIN_SLOPE = 1e-3
# Past its highest tested sparsity, a layer's drop is taken to rise by a whole unit (100 points)
# at MAX_LAYER_SPARSITY: layers leave the tested range only when the others cost more.
_UNTESTED_DROP = 1.0


@dataclasses.dataclass(frozen=True)
class PrunableLayer:
    """One pruned layer, as the allocations see it.

    Attributes:
        name: The layer's name.
        kernels: The values of its kernels (two for a SeparableConv2D).
        cap: Its highest target (its role's cap, at most `MAX_LAYER_SPARSITY`).
    """

    name: str
    kernels: tuple[np.ndarray, ...]
    cap: float = MAX_LAYER_SPARSITY

    @property
    def params(self) -> int:
        """The number of kernel weights."""
        return sum(int(kernel.size) for kernel in self.kernels)


Allocation = Callable[[Sequence[PrunableLayer], float, "PruneConfig"], dict[str, float]]
ALLOCATIONS: Registry[Allocation] = Registry("prune.allocation")


def check_config(prune: PruneConfig) -> None:
    """Checks the allocation settings of the `prune` section (called by config validation).

    Raises:
        UserError: On an unknown allocation, a cap outside [0, 0.99], or a non-uniform
            allocation combined with `m_by_n` or missing what it reads.
    """
    ALLOCATIONS.get(prune.allocation)
    for role, cap in dataclasses.asdict(prune.caps).items():
        if cap is not None and not 0.0 <= cap <= MAX_LAYER_SPARSITY:
            raise UserError(
                f"config key 'prune.caps.{role}' must be in [0, {MAX_LAYER_SPARSITY}] or null "
                f"(no cap), got {cap}"
            )
    if prune.schedule == "none" or prune.allocation == "uniform":
        return
    if prune.m_by_n:
        raise UserError(
            f"prune.allocation {prune.allocation} cannot be combined with prune.m_by_n (every "
            "layer gets m of n zeros); use prune.allocation=uniform"
        )
    if prune.allocation == "global_magnitude" and not prune.from_run:
        raise UserError(
            "prune.allocation global_magnitude ranks trained weights: set prune.from_run to a "
            "finished dense run (freshly initialized weights say nothing about importance)"
        )
    if prune.allocation == "sensitivity" and not (prune.sensitivity_file or prune.from_run):
        raise UserError(
            "prune.allocation sensitivity needs a sensitivity.csv: run `compactcnn sensitivity "
            "RUN` and set prune.from_run=RUN (or prune.sensitivity_file)"
        )


def layer_roles(model: Any) -> dict[str, str]:
    """The kernel layers that have a cappable role, and their role.

    - `stem`: the first kernel layer of the model (in layer order: it sees the image).
    - `classifier`: the last kernel layer, when it is a Dense.
    - `shortcut`: a Conv2D with a 1x1 kernel whose name contains `shortcut` (the built-in
      ResNets' projection shortcuts; name a user model's so to give them the cap).

    Args:
        model: A Functional Keras model, unwrapped.

    Returns:
        {layer name: role}.
    """
    import tf_keras as keras  # here: this module loads no TensorFlow at import

    from compactcnn import kernels

    layers = [layer for layer in model.layers if kernels.is_kernel_layer(layer)]
    roles = {
        layer.name: "shortcut"
        for layer in layers
        if type(layer) is keras.layers.Conv2D
        and "shortcut" in layer.name
        and tuple(layer.kernel_size) == (1, 1)
    }
    if layers:
        roles[layers[0].name] = "stem"
        if type(layers[-1]) is keras.layers.Dense:
            roles[layers[-1].name] = "classifier"
    return roles


def layer_targets(model: Any, prune: PruneConfig, names: Sequence[str]) -> dict[str, float]:
    """The target sparsity of each layer to prune, from the model's current weights.

    Args:
        model: The model pruning starts from (its weights are read), unwrapped.
        prune: The `prune` section.
        names: The layers to prune, in model order.

    Returns:
        {layer name: target}; see `allocate`.

    Raises:
        UserError: When the caps make the target unreachable, or a sensitivity file is
            missing, malformed or lacks a layer.
    """
    import tf_keras as keras  # here: this module loads no TensorFlow at import

    from compactcnn import kernels

    roles = layer_roles(model)
    caps = dataclasses.asdict(prune.caps)
    layers = []
    for name in names:
        layer = model.get_layer(name)
        values = keras.backend.batch_get_value(kernels.kernel_weights(layer))
        cap = caps.get(roles.get(name, ""))
        cap = MAX_LAYER_SPARSITY if cap is None else min(cap, MAX_LAYER_SPARSITY)
        layers.append(PrunableLayer(name, tuple(np.asarray(v) for v in values), cap))
    return allocate(layers, prune.final_sparsity, prune)


def allocate(
    layers: Sequence[PrunableLayer], target: float, prune: PruneConfig
) -> dict[str, float]:
    """Shares `target` among `layers` with the configured allocation.

    Returns:
        {layer name: target sparsity}, parameter-weighted mean within `MEAN_TOLERANCE` of
        `target`; within each layer's cap unless the allocation is `uniform`.

    Raises:
        UserError: When the caps make `target` unreachable (non-uniform allocations).
    """
    strategy = ALLOCATIONS.get(prune.allocation)
    if prune.allocation != "uniform":
        _check_reachable(layers, target)
    targets = strategy(layers, target, prune)
    if prune.allocation != "uniform":
        targets = {
            layer.name: float(np.clip(targets[layer.name], 0.0, layer.cap)) for layer in layers
        }
    mean = weighted_mean(targets, {layer.name: layer.params for layer in layers})
    if abs(mean - target) > MEAN_TOLERANCE:  # A bug here, not a user mistake.
        raise RuntimeError(f"{prune.allocation} allocation gave mean {mean:.4f}, not {target}")
    return targets


def weighted_mean(targets: dict[str, float], params: dict[str, int]) -> float:
    """The parameter-weighted mean of per-layer sparsities."""
    total = sum(params[name] for name in targets)
    return sum(targets[name] * params[name] for name in targets) / total if total else 0.0


def _check_reachable(layers: Sequence[PrunableLayer], target: float) -> None:
    total = sum(layer.params for layer in layers)
    most = sum(layer.params * layer.cap for layer in layers) / total if total else 0.0
    if target > most + 1e-9:
        capped = [layer for layer in layers if layer.cap < MAX_LAYER_SPARSITY]
        share = sum(layer.params for layer in capped) / total if total else 0.0
        raise UserError(
            f"prune.final_sparsity {target} is out of reach: the capped layers "
            f"({', '.join(layer.name for layer in capped) or 'none'}; {share:.1%} of the "
            f"weights) and the others at most {MAX_LAYER_SPARSITY} give at most {most:.4f}; "
            "raise prune.caps.stem/shortcut/classifier or lower prune.final_sparsity"
        )


@ALLOCATIONS.register
def uniform(layers: Sequence[PrunableLayer], target: float, prune: PruneConfig) -> dict[str, float]:
    """Every layer gets the global target; caps do not apply."""
    return {layer.name: target for layer in layers}


@ALLOCATIONS.register
def global_magnitude(
    layers: Sequence[PrunableLayer], target: float, prune: PruneConfig
) -> dict[str, float]:
    """What one magnitude threshold over all kernels gives each layer, within its cap.

    The `round(target * weights)` smallest magnitudes of all kernels together are zeroed (ties,
    such as the zeros of an already pruned model, in layer order); a layer's share is the
    fraction of its weights among them. A layer that would pass its cap is held at the cap and
    the threshold is found again over the other layers for the zeros still missing
    (water-filling), so the mean stays the target.
    """
    params = {layer.name: layer.params for layer in layers}
    total_zeros = target * sum(params.values())
    magnitudes = {
        layer.name: np.concatenate([np.abs(k).ravel() for k in layer.kernels]) for layer in layers
    }
    fixed: dict[str, float] = {}
    free = list(layers)
    while free:
        missing = total_zeros - sum(fixed[name] * params[name] for name in fixed)
        pooled = np.concatenate([magnitudes[layer.name] for layer in free])
        owner = np.repeat(np.arange(len(free)), [layer.params for layer in free])
        count = int(np.clip(round(missing), 0, pooled.size))
        smallest = np.argsort(pooled, kind="stable")[:count]
        zeros = np.bincount(owner[smallest], minlength=len(free))
        shares = {layer.name: int(zeros[i]) / layer.params for i, layer in enumerate(free)}
        over = [layer for layer in free if shares[layer.name] > layer.cap]
        if not over:
            fixed.update(shares)
            break
        # Holding a layer at its cap raises the threshold for the rest, so every layer over its
        # cap now stays over it: all of them are fixed at once.
        for layer in over:
            fixed[layer.name] = layer.cap
            free.remove(layer)
    return {layer.name: fixed[layer.name] for layer in layers}


@ALLOCATIONS.register
def sensitivity(
    layers: Sequence[PrunableLayer], target: float, prune: PruneConfig
) -> dict[str, float]:
    """More sparsity where the sensitivity file measured less accuracy drop."""
    path = sensitivity_path(prune)
    curves = read_sensitivity(path)
    missing = [layer.name for layer in layers if layer.name not in curves]
    if missing:
        raise UserError(
            f"sensitivity file '{path}' has no rows for layer '{missing[0]}'; run "
            "`compactcnn sensitivity` on a run of this model"
        )
    return sensitivity_targets(
        {layer.name: curves[layer.name] for layer in layers},
        {layer.name: layer.params for layer in layers},
        {layer.name: layer.cap for layer in layers},
        target,
    )


def sensitivity_targets(
    curves: dict[str, Sequence[tuple[float, float]]],
    params: dict[str, int],
    caps: dict[str, float],
    target: float,
) -> dict[str, float]:
    """The sensitivity rule: one accuracy-drop tolerance for every layer, bisected.

    Each layer's drop curve is its measured (sparsity, drop) points with drop 0 at sparsity 0,
    made non-decreasing (and rising by at least `_MIN_SLOPE` per unit of sparsity), extended to
    a drop `_UNTESTED_DROP` above its last point at `MAX_LAYER_SPARSITY`, and linearly
    interpolated. For a tolerance t every layer gets the highest sparsity whose drop is at most
    t, capped; t is bisected until the parameter-weighted mean is `target`.

    Args:
        curves: {layer: [(sparsity, accuracy drop), ...]} as measured.
        params: {layer: kernel weights}.
        caps: {layer: highest target}.
        target: The parameter-weighted mean to reach; must be within the caps.

    Returns:
        {layer: target sparsity}.
    """
    inverse = {name: _drop_curve(points) for name, points in curves.items()}
    total = sum(params[name] for name in curves)

    def shares(tolerance: float) -> dict[str, float]:
        return {
            name: min(caps[name], float(np.interp(tolerance, drops, sparsities)))
            for name, (sparsities, drops) in inverse.items()
        }

    def mean(tolerance: float) -> float:
        found = shares(tolerance)
        return sum(found[name] * params[name] for name in found) / total

    low, high = 0.0, max(float(drops[-1]) for _, drops in inverse.values())
    for _ in range(100):  # The mean is continuous and non-decreasing in the tolerance.
        middle = (low + high) / 2
        if mean(middle) < target:
            low = middle
        else:
            high = middle
    return shares(high)


def _drop_curve(points: Sequence[tuple[float, float]]) -> tuple[np.ndarray, np.ndarray]:
    """(sparsities, drops) of one layer: from (0, 0), strictly rising, ending at 0.99."""
    measured = {float(s): float(d) for s, d in points if 0.0 < s < MAX_LAYER_SPARSITY}
    sparsities, drops = [0.0], [0.0]
    for sparsity_value in sorted(measured):
        floor = drops[-1] + _MIN_SLOPE * (sparsity_value - sparsities[-1])
        sparsities.append(sparsity_value)
        drops.append(max(measured[sparsity_value], floor))
    sparsities.append(MAX_LAYER_SPARSITY)
    drops.append(drops[-1] + _UNTESTED_DROP)
    return np.array(sparsities), np.array(drops)


def sensitivity_path(prune: PruneConfig) -> Path:
    """The sensitivity.csv to read: `prune.sensitivity_file`, else the `from_run` run's.

    Raises:
        UserError: When that file does not exist.
    """
    if prune.sensitivity_file:
        path = Path(prune.sensitivity_file).expanduser()
        if not path.is_file():
            raise UserError(
                f"prune.sensitivity_file '{path}' not found; write one with "
                "`compactcnn sensitivity RUN` (RUN/sensitivity.csv)"
            )
        return path
    folder = pretrained.resolve(str(prune.from_run), "prune.from_run").parent
    path = folder / SENSITIVITY_FILE
    if not path.is_file():
        raise UserError(
            f"prune.allocation sensitivity reads '{path}', which does not exist; run "
            f"`compactcnn sensitivity {folder}` first (or set prune.sensitivity_file)"
        )
    return path


def read_sensitivity(path: str | Path) -> dict[str, list[tuple[float, float]]]:
    """Reads a sensitivity.csv: {layer: [(sparsity, drop), ...]} in file order.

    Raises:
        UserError: When the file lacks the columns or holds a value that is not a number.
    """
    path = Path(path)
    with path.open(newline="") as handle:
        reader = csv.DictReader(handle)
        if not {"layer", "sparsity", "drop"} <= set(reader.fieldnames or ()):
            raise UserError(
                f"'{path}' is not a sensitivity file (it needs the columns "
                f"{', '.join(SENSITIVITY_COLUMNS)}); write it with `compactcnn sensitivity RUN`"
            )
        curves: dict[str, list[tuple[float, float]]] = {}
        for line, row in enumerate(reader, start=2):
            try:
                point = (float(row["sparsity"]), float(row["drop"]))
            except (TypeError, ValueError):
                raise UserError(
                    f"'{path}' line {line}: sparsity and drop must be numbers; rewrite it with "
                    "`compactcnn sensitivity RUN`"
                ) from None
            curves.setdefault(row["layer"], []).append(point)
    return curves
