"""prune.allocation: per-layer targets (uniform, global_magnitude, sensitivity), caps, report."""

import dataclasses
import json

import compactcnn  # noqa: F401  (must precede any TensorFlow import)

# isort: split
import numpy as np
import pytest
import tf_keras as keras

from compactcnn import allocation, kernels, prune, report
from compactcnn.config import PruneCapsConfig, PruneConfig, load_config
from compactcnn.errors import UserError
from compactcnn.report.layer_targets import layer_target_pieces
from tests import test_report
from tests.tiny import build_tiny_model

NO_CAPS = PruneCapsConfig(stem=None, shortcut=None, classifier=None)
TARGET = 0.6


def shortcut_model() -> keras.Model:
    """Stem conv, a residual block with a 1x1 projection shortcut, and a Dense classifier."""
    inputs = keras.Input((8, 8, 3), name="image")
    x = keras.layers.Rescaling(1 / 127.5, offset=-1, name="normalize")(inputs)
    x = keras.layers.Conv2D(8, 3, padding="same", name="stem_conv")(x)
    y = keras.layers.Conv2D(16, 3, padding="same", name="block_conv")(x)
    shortcut = keras.layers.Conv2D(16, 1, name="block_shortcut")(x)
    x = keras.layers.Add(name="add")([y, shortcut])
    x = keras.layers.GlobalAveragePooling2D(name="pool")(x)
    outputs = keras.layers.Dense(4, activation="softmax", name="logits")(x)
    return keras.Model(inputs, outputs, name="with_shortcut")


def scaled_weights(model: keras.Model, scales: dict[str, float], seed: int = 0) -> keras.Model:
    """Gives each named layer's kernel normal weights of its own scale (trained-looking)."""
    generator = np.random.default_rng(seed)
    for name, scale in scales.items():
        layer = model.get_layer(name)
        layer.kernel.assign(generator.normal(0, scale, layer.kernel.shape).astype("float32"))
    return model


def kernel_layers(model: keras.Model) -> list[str]:
    return [layer.name for layer in model.layers if kernels.is_kernel_layer(layer)]


def params_of(model: keras.Model) -> dict[str, int]:
    return {
        name: int(model.get_layer(name).kernel.shape.num_elements())
        for name in kernel_layers(model)
    }


def write_sensitivity_csv(path, curves: dict[str, list[tuple[float, float]]], params) -> None:
    lines = [",".join(allocation.SENSITIVITY_COLUMNS)]
    for name, points in curves.items():
        for sparsity, drop in [(0.0, 0.0), *points]:
            lines.append(f"{name},{params[name]},{sparsity},{0.9 - drop},{drop}")
    path.write_text("\n".join(lines) + "\n")


def test_layer_roles_find_stem_shortcut_and_classifier():
    assert allocation.layer_roles(shortcut_model()) == {
        "stem_conv": "stem",
        "block_shortcut": "shortcut",
        "logits": "classifier",
    }
    # The tiny ResNet-shaped model: a 3x3 "conv2" is no shortcut.
    assert allocation.layer_roles(build_tiny_model()) == {"conv1": "stem", "logits": "classifier"}


@pytest.mark.parametrize("name", ["uniform", "global_magnitude", "sensitivity"])
def test_weighted_mean_of_targets_is_the_global_target(name, tmp_path):
    model = scaled_weights(
        shortcut_model(),
        {"stem_conv": 0.5, "block_conv": 0.05, "block_shortcut": 0.2, "logits": 1.0},
    )
    params = params_of(model)
    csv_path = tmp_path / "sensitivity.csv"
    drops = {"stem_conv": 0.3, "block_conv": 0.01, "block_shortcut": 0.2, "logits": 0.4}
    write_sensitivity_csv(
        csv_path, {layer: [(0.5, d / 4), (0.9, d)] for layer, d in drops.items()}, params
    )
    config = PruneConfig(
        schedule="constant", final_sparsity=TARGET, allocation=name, sensitivity_file=str(csv_path)
    )

    targets = allocation.layer_targets(model, config, kernel_layers(model))

    assert list(targets) == kernel_layers(model)
    mean = sum(targets[n] * params[n] for n in targets) / sum(params.values())
    assert abs(mean - TARGET) <= allocation.MEAN_TOLERANCE
    assert all(0.0 <= value <= 0.99 for value in targets.values())
    if name == "uniform":
        assert set(targets.values()) == {TARGET}
    else:
        # The caps (0.5 by default) hold, and the rest is spread unevenly.
        for layer in ("stem_conv", "block_shortcut", "logits"):
            assert targets[layer] <= 0.5 + 1e-9
        assert targets["block_conv"] > TARGET + 0.05


def test_global_magnitude_is_one_numpy_threshold_over_all_kernels():
    model = scaled_weights(
        build_tiny_model(width=16), {"conv1": 1.0, "conv2": 0.1, "logits": 0.5}, seed=3
    )
    config = PruneConfig(
        schedule="constant", final_sparsity=TARGET, allocation="global_magnitude", caps=NO_CAPS
    )
    names = kernel_layers(model)

    targets = allocation.layer_targets(model, config, names)

    magnitudes = {n: np.abs(model.get_layer(n).kernel.numpy()).ravel() for n in names}
    pooled = np.sort(np.concatenate(list(magnitudes.values())))
    threshold = pooled[round(TARGET * pooled.size) - 1]
    expected = {n: float(np.mean(magnitudes[n] <= threshold)) for n in names}
    assert targets == pytest.approx(expected, abs=1e-12)
    assert max(expected.values()) - min(expected.values()) > 0.3  # A threshold, not uniform.


def test_global_magnitude_of_an_already_sparser_model_still_hits_the_target():
    # A 70%-pruned model fine-tuned to 50%: the many tied zeros must not all count.
    model = scaled_weights(build_tiny_model(width=16), {"conv1": 1.0, "conv2": 1.0, "logits": 1.0})
    for name in ("conv1", "conv2", "logits"):
        kernel = model.get_layer(name).kernel
        kernel.assign(np.where(np.abs(kernel) < 1.04, 0.0, kernel))
    names = kernel_layers(model)
    config = PruneConfig(
        schedule="constant", final_sparsity=0.5, allocation="global_magnitude", caps=NO_CAPS
    )

    targets = allocation.layer_targets(model, config, names)

    assert allocation.weighted_mean(targets, params_of(model)) == pytest.approx(0.5, abs=1e-3)


def test_capped_layers_hold_their_cap_and_the_others_absorb_the_rest():
    # Tiny stem and classifier weights: one uncapped threshold would prune them first.
    model = scaled_weights(
        shortcut_model(),
        {"stem_conv": 0.001, "block_conv": 1.0, "block_shortcut": 0.001, "logits": 0.001},
    )
    caps = PruneCapsConfig(stem=0.2, shortcut=0.3, classifier=None)
    config = PruneConfig(
        schedule="constant", final_sparsity=TARGET, allocation="global_magnitude", caps=caps
    )
    params = params_of(model)

    targets = allocation.layer_targets(model, config, kernel_layers(model))

    assert targets["stem_conv"] == 0.2 and targets["block_shortcut"] == 0.3
    assert targets["logits"] == 0.99  # No cap of its own: the 0.99 ceiling.
    mean = sum(targets[n] * params[n] for n in targets) / sum(params.values())
    assert abs(mean - TARGET) <= allocation.MEAN_TOLERANCE


def test_unreachable_target_is_a_one_line_error_before_training():
    model = build_tiny_model(width=8)
    caps = PruneCapsConfig(stem=0.0, shortcut=0.0, classifier=0.0)
    config = PruneConfig(
        schedule="constant",
        final_sparsity=0.95,
        frequency=1,
        allocation="global_magnitude",
        caps=caps,
    )
    with pytest.raises(UserError, match="out of reach") as caught:
        prune.wrap(model, config, steps_per_epoch=4, epochs=2)
    message = str(caught.value)
    assert "\n" not in message and "conv1, logits" in message and "prune.caps" in message
    # Reachable with the caps lifted: the error came from the caps.
    lifted = dataclasses.replace(config, caps=NO_CAPS)
    prune.wrap(model, lifted, steps_per_epoch=4, epochs=2)


def test_config_refuses_unknown_allocations_and_untrained_global_magnitude():
    with pytest.raises(UserError, match="choose one of global_magnitude, sensitivity, uniform"):
        load_config(None, ["prune.allocation=magnitude"])
    with pytest.raises(UserError, match="prune.from_run"):
        load_config(None, ["prune.schedule=constant", "prune.allocation=global_magnitude"])
    with pytest.raises(UserError, match="prune.caps.stem"):
        load_config(None, ["prune.caps.stem=1.5"])
    config = load_config(None, ["prune.allocation=sensitivity", "prune.caps.classifier=null"])
    assert config.prune.allocation == "sensitivity" and config.prune.caps.classifier is None


def test_sensitivity_rule_gives_more_sparsity_to_the_less_sensitive_layer():
    curves = {
        "robust": [(0.0, 0.0), (0.5, 0.0), (0.7, 0.01), (0.9, 0.02)],
        "fragile": [(0.0, 0.0), (0.5, 0.05), (0.7, 0.2), (0.9, 0.5)],
    }
    params = {"robust": 1000, "fragile": 1000}
    caps = {"robust": 0.99, "fragile": 0.99}

    targets = allocation.sensitivity_targets(curves, params, caps, TARGET)

    assert targets["robust"] > targets["fragile"] + 0.4
    assert (targets["robust"] + targets["fragile"]) / 2 == pytest.approx(TARGET, abs=1e-4)
    # Both within the tested drops of one tolerance: robust at 0.9 (drop 0.02), fragile where
    # its interpolated drop is about 0.02 too (0.2 of the way to 0.5).
    assert targets["robust"] == pytest.approx(0.9, abs=0.01)
    # A cap on the robust layer moves the rest onto the fragile one.
    capped = allocation.sensitivity_targets(curves, params, {**caps, "robust": 0.7}, TARGET)
    assert capped["robust"] == pytest.approx(0.7) and capped["fragile"] == pytest.approx(0.5)


def test_global_magnitude_pruning_reaches_each_layer_target():
    model = scaled_weights(
        build_tiny_model(width=16, num_classes=4, size=8),
        {"conv1": 0.3, "conv2": 0.05, "logits": 0.2},
    )
    config = PruneConfig(
        schedule="polynomial",
        initial_sparsity=0.2,
        final_sparsity=TARGET,
        end_epoch=2.0,
        frequency=2,
        allocation="global_magnitude",
    )
    wrapped = prune.wrap(model, config, steps_per_epoch=4, epochs=3)
    targets = prune.layer_targets(wrapped)
    assert targets == allocation.layer_targets(model, config, kernel_layers(model))
    assert len(set(targets.values())) == 3
    generator = np.random.default_rng(0)
    images = generator.integers(0, 256, (32, 8, 8, 3)).astype("float32")
    labels = generator.integers(0, 4, 32)
    wrapped.compile(optimizer=keras.optimizers.SGD(0.01), loss="sparse_categorical_crossentropy")
    wrapped.fit(images, labels, batch_size=8, epochs=3, verbose=0, callbacks=prune.callbacks(None))

    layers = prune.sparsity_report(prune.strip(wrapped), targets)["layers"]

    for name, target in targets.items():
        assert layers[name]["target"] == target
        assert abs(layers[name]["sparsity"] - target) <= 0.01, name


def test_uniform_allocation_keeps_the_one_global_schedule():
    config = PruneConfig(schedule="polynomial", final_sparsity=TARGET, end_epoch=2.0, frequency=2)
    wrapped = prune.wrap(build_tiny_model(), config, steps_per_epoch=4, epochs=3)
    expected = prune.make_schedule(config, 4, 3).get_config()
    wrappers = [layer for layer in wrapped.layers if isinstance(layer, prune.PruneLowMagnitude)]
    assert [w.pruning_schedule.get_config() for w in wrappers] == [expected] * 3
    assert prune.layer_targets(wrapped) == {"conv1": TARGET, "conv2": TARGET, "logits": TARGET}


sweep_dir = test_report.sweep_dir  # The report tests' fake sweep, as a fixture here too.


def test_report_shows_the_best_runs_targets_next_to_measured(sweep_dir):
    best = sweep_dir / "runs" / "r44-polynomial" / "metrics.json"
    metrics = json.loads(best.read_text())
    metrics["pruning"]["allocation"] = "global_magnitude"
    for index, entry in enumerate(metrics["pruning"]["layers"].values()):
        entry["target"] = 0.5 + index / 10
    best.write_text(json.dumps(metrics))

    markdown = report.write_report(sweep_dir).read_text()

    assert "### Per-layer targets of the best model" in markdown
    assert "`global_magnitude` allocation" in markdown
    assert "| layer | weights | target | measured |" in markdown
    assert "| conv3 | 100 | 80.0% | 63.0% |" in markdown
    # A best run without targets (the other runs here) gets no such table.
    assert layer_target_pieces(sweep_dir, {"name": "r44-constant"}) == []
