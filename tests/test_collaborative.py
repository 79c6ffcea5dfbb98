"""The collaborative chain: prune -> sparsity-preserving clustering -> PCQAT -> full-integer int8.

The int8 file is read here with LiteRT and counted by this file's own code; the rule it checks
(docs in README.md and `evaluate.distinct_values_per_tensor`): every weight tensor keeps the
pruned zeros, and the weights that share one quantization scale (an output channel of a
per-channel tensor, or the whole tensor) hold at most `weight_clusters` distinct int8 values,
zero included.
"""

import json
from pathlib import Path

import numpy as np
import pytest
import tf_keras as keras
from ai_edge_litert.interpreter import Interpreter, OpResolverType

from compactcnn import cluster, evaluate, quantize, run
from compactcnn.cli import main
from compactcnn.config import QuantizeConfig, load_config
from tests.tiny import colour_images

ROOT = Path(__file__).resolve().parent.parent
CLUSTERS = 8
SPARSITY = 0.7
WEIGHT_OPS = ("CONV_2D", "DEPTHWISE_CONV_2D", "FULLY_CONNECTED")


def build_model(num_classes: int, input_shape: tuple[int, int, int]) -> keras.Model:
    """Conv2D, DepthwiseConv2D, Conv2D and Dense kernels, each with enough weights per output
    channel (or per tensor) that 8 clusters are a real bound on their int8 values."""
    inputs = keras.Input(input_shape, name="image")
    x = keras.layers.Rescaling(1 / 127.5, offset=-1, name="normalize")(inputs)
    x = keras.layers.Conv2D(8, 3, strides=2, padding="same", use_bias=False, name="stem")(x)
    x = keras.layers.BatchNormalization(name="stem_bn")(x)
    x = keras.layers.ReLU(name="stem_relu")(x)
    x = keras.layers.DepthwiseConv2D(3, padding="same", use_bias=False, name="dw")(x)
    x = keras.layers.BatchNormalization(name="dw_bn")(x)
    x = keras.layers.ReLU(name="dw_relu")(x)
    x = keras.layers.Conv2D(16, 3, padding="same", use_bias=False, name="conv")(x)
    x = keras.layers.BatchNormalization(name="conv_bn")(x)
    x = keras.layers.ReLU(name="conv_relu")(x)
    x = keras.layers.GlobalAveragePooling2D(name="pool")(x)
    outputs = keras.layers.Dense(num_classes, activation="softmax", name="head")(x)
    return keras.Model(inputs, outputs, name="collaborative")


@pytest.fixture(scope="module")
def chain_run(tmp_path_factory):
    """One tiny run: 70% constant pruning, 8 clusters, PCQAT, int8 export."""
    run_dir = tmp_path_factory.mktemp("collaborative") / "run"
    config = load_config(
        None,
        [
            "data.name=synthetic",
            "data.synthetic_size=64",
            "data.synthetic_classes=4",
            "data.image_size=[16, 16]",
            "model.name=tests.test_collaborative:build_model",
            "train.batch_size=16",
            "train.epochs=1",
            "train.bn_recalibration_batches=2",
            "prune.schedule=constant",
            f"prune.final_sparsity={SPARSITY}",
            "prune.end_epoch=1",
            "prune.frequency=1",
            f"quantize.weight_clusters={CLUSTERS}",
            "quantize.qat=true",
            "quantize.formats=[int8]",
            "quantize.calibration_samples=16",
            "output.latency_runs=2",
            "output.tensorboard=false",
        ],
    )
    with pytest.MonkeyPatch.context() as patch:
        patch.chdir(ROOT)  # The builder's module is found from the working directory.
        metrics = run.run(config, run_dir, verbose=0)
    return run_dir, metrics


def int8_weights(path) -> dict[str, tuple[np.ndarray, dict]]:
    """{tensor name: (stored values, quantization parameters)} of every conv / fc filter."""
    interpreter = Interpreter(
        model_path=str(path),
        experimental_op_resolver_type=OpResolverType.BUILTIN_WITHOUT_DEFAULT_DELEGATES,
    )
    interpreter.allocate_tensors()
    details = {detail["index"]: detail for detail in interpreter.get_tensor_details()}
    weights = {}
    for op in interpreter._get_ops_details():
        if op["op_name"] in WEIGHT_OPS:
            detail = details[int(op["inputs"][1])]
            values = interpreter.get_tensor(detail["index"])
            weights[detail["name"]] = (values, detail["quantization_parameters"])
    return weights


def scale_groups(values: np.ndarray, parameters: dict) -> list[np.ndarray]:
    """The weights of each quantization scale: one row per channel, or the whole tensor."""
    if len(parameters["scales"]) == 1:
        return [values.reshape(-1)]
    rows = np.moveaxis(values, parameters["quantized_dimension"], 0)
    return list(rows.reshape(len(parameters["scales"]), -1))


def test_int8_file_keeps_the_zeros_and_at_most_n_values_per_scale_and_tensor(chain_run):
    run_dir, metrics = chain_run
    assert metrics["tflite"]["int8"]["qat"] is True
    weights = int8_weights(run_dir / "tflite" / "int8.tflite")
    assert len(weights) == 4  # stem, dw, conv, head
    total = zeros = 0
    bounded = 0
    for name, (values, parameters) in weights.items():
        assert values.dtype == np.int8, name
        assert not np.any(parameters["zero_points"]), name  # int8 weights: zero point 0
        # Every layer, the depthwise one too (tfmot's PCQAT alone lost its zeros).
        assert np.mean(values == 0) >= SPARSITY - 0.01, name
        total += values.size
        zeros += int(np.count_nonzero(values == 0))
        groups = scale_groups(values, parameters)
        for group in groups:
            assert np.unique(group).size <= CLUSTERS, name
        # And per tensor: the run gives each clustered kernel one range for all its channels
        # (`quantize.share_kernel_ranges`), so a shared value is one code in every channel.
        assert np.unique(values).size <= CLUSTERS, name
        # Not a vacuous bound: some scale holds more non-zero weights than there are clusters.
        bounded += max(np.count_nonzero(group) for group in groups) > CLUSTERS
    assert zeros / total >= SPARSITY - 0.01
    assert bounded >= 2


def test_helper_and_metrics_agree_with_the_count_made_here(chain_run):
    run_dir, metrics = chain_run
    path = run_dir / "tflite" / "int8.tflite"
    weights = int8_weights(path)
    expected = {
        name: {
            "values": int(np.unique(values).size),
            "per_scale": max(int(np.unique(g).size) for g in scale_groups(values, parameters)),
        }
        for name, (values, parameters) in weights.items()
    }
    assert evaluate.distinct_values_per_tensor(path) == expected
    written = json.loads((run_dir / "metrics.json").read_text())["tflite"]["int8"]
    assert written["max_distinct_values"] == max(c["per_scale"] for c in expected.values())
    assert written["max_distinct_values"] <= CLUSTERS
    zeros = sum(int(np.count_nonzero(values == 0)) for values, _ in weights.values())
    size = sum(values.size for values, _ in weights.values())
    assert written["zeros_fraction"] == pytest.approx(zeros / size)


def snap(kernel: np.ndarray, clusters: int, sparsity: float) -> np.ndarray:
    """Zeroes the smallest `sparsity` of a kernel and snaps the rest to `clusters` - 1 values
    (or all of it to `clusters` values when `sparsity` is 0): a pruned, clustered kernel."""
    kernel = kernel.copy()
    if sparsity:
        kernel[np.abs(kernel) <= np.quantile(np.abs(kernel), sparsity)] = 0.0
        clusters -= 1
    kept = kernel != 0
    centroids = np.linspace(kernel[kept].min(), kernel[kept].max(), clusters)
    nearest = np.argmin(np.abs(kernel[kept][:, None] - centroids[None, :]), axis=1)
    kernel[kept] = centroids[nearest]
    return kernel


def test_pcqat_keeps_zeros_and_clusters_of_every_kernel_kind():
    """A dense first kernel must not switch sparsity off for the others (one shared tfmot
    quantizer did), and depthwise kernels keep their values too (`KeepClusters`)."""
    keras.utils.set_random_seed(0)
    images, labels = colour_images(64, seed=0)
    model = build_model(num_classes=4, input_shape=(32, 32, 3))
    sparsities = {"stem": 0.0, "dw": SPARSITY, "conv": SPARSITY, "head": SPARSITY}
    for name, sparsity in sparsities.items():
        weight = model.get_layer(name).weights[0]
        weight.assign(snap(weight.numpy(), CLUSTERS, sparsity))
    before = {w.name: w.numpy() for w in model.weights if "kernel" in w.name}
    assert cluster.distinct_values_report(model)["max_distinct_values"] == CLUSTERS
    qat_model = quantize.prepare_qat(model, preserve_sparsity=True, preserve_clusters=True)
    qat_model.compile(keras.optimizers.SGD(0.05, momentum=0.9), "sparse_categorical_crossentropy")
    qat_model.fit(
        images.astype(np.float32),
        labels,
        batch_size=16,
        epochs=2,
        verbose=0,
        callbacks=[quantize.KeepClusters(qat_model)],
    )
    after = {w.name: w.numpy() for w in qat_model.weights if w.name in before}
    assert after.keys() == before.keys()
    for name, kernel in after.items():
        # tfmot fine-tunes a Conv2D kernel whose channels hold (nearly) as many values each
        # per output channel, so each channel keeps its own N values (measured: 56 in the
        # dense stem); the Dense and the depthwise kernels keep N values in all.
        per_channel = name in ("stem/kernel:0", "conv/kernel:0")
        parts = np.moveaxis(kernel, -1, 0) if per_channel else [kernel]
        for values in parts:
            assert np.unique(values).size <= CLUSTERS, name
        assert np.all(kernel[before[name] == 0] == 0), name
        assert not np.array_equal(kernel, before[name]), name  # The shared values trained.


def test_one_cluster_is_a_one_line_error_before_anything_runs(tmp_path, capsys):
    argv = ["run", str(ROOT / "configs" / "sample_scratch.yaml"), "--out", str(tmp_path / "run")]
    assert main([*argv, "--set", "quantize.weight_clusters=1", "--set", "quantize.qat=true"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and "\n" not in err
    assert "'quantize.weight_clusters' must be 0 (off) or 3 to 256" in err
    assert not (tmp_path / "run").exists()


def test_shared_kernel_ranges_give_each_shared_value_one_code_in_every_channel(tmp_path):
    """Per-channel ranges turn one shared value into a different int8 code in each channel
    whose largest weight differs; one range per kernel makes the codes the kernel's own."""
    keras.utils.set_random_seed(0)
    images, _ = colour_images(32, seed=0)
    model = build_model(num_classes=4, input_shape=(32, 32, 3))
    generator = np.random.default_rng(0)
    centroids = np.array([-0.9, -0.4, 0.0, 0.3, 0.7], np.float32)
    conv = model.get_layer("conv")
    kernel = generator.choice(centroids, conv.kernel.shape, p=[0.02, 0.2, 0.56, 0.2, 0.02])
    kernel[..., :4] = np.where(np.abs(kernel[..., :4]) > 0.8, 0.3, kernel[..., :4])  # no -0.9
    conv.kernel.assign(kernel)
    bn = model.get_layer("conv_bn")  # Folded into the scales: one factor per channel.
    bn.gamma.assign(generator.uniform(0.5, 2.0, 16))
    bn.moving_variance.assign(generator.uniform(0.5, 2.0, 16))
    qat_model = quantize.prepare_qat(model, preserve_sparsity=True, preserve_clusters=True)
    qat_model(images.astype(np.float32), training=True)  # Sets each channel's range.
    config = QuantizeConfig(formats=["int8"], calibration_samples=16)

    def conv_codes(folder: str) -> np.ndarray:
        path = quantize.export(qat_model, config, images, tmp_path / folder, ["int8"])["int8"]
        (values,) = [v for name, (v, _) in int8_weights(path).items() if "quant_conv/" in name]
        return values  # OHWI

    per_channel = conv_codes("per_channel")
    assert np.unique(per_channel).size > centroids.size  # What the shared ranges fix.
    # Only `conv` is clustered: the stem and depthwise kernels keep their free values, and
    # the Dense head has one range already.
    assert quantize.share_kernel_ranges(qat_model, max_values=centroids.size) == 1
    shared = conv_codes("shared")
    assert np.unique(shared).size == centroids.size
    expected = np.round(centroids / 0.9 * 127).astype(np.int8)
    assert set(np.unique(shared)) == set(expected)
    # The float kernel's zeros and membership are the same: only the codes' scale changed.
    assert np.array_equal(shared == 0, np.moveaxis(kernel, -1, 0) == 0)
