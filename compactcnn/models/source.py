"""Where `model.name` points, and building what it points at for a run.

`model.name` is a registered model (`resnet20`), a saved Keras 2 model (`path/to/model.keras`,
whose weights are the starting point) or a builder (`my_package.my_module:build`).

`resolve` runs before any data is loaded: it loads or imports what the name points at and settles
the image size (the model's own input, `data.image_size`, or 32x32), so each of these mistakes is
a one-line error before anything is written. `ModelPlan.build` then builds the training model
inside the strategy's scope. A registered model comes from its builder. A user model is made a
flat Functional model: nested models spliced in, the input fixed at the image size, the input
normalization found or added (`compactcnn.models.normalization`), a softmax at the end when it
ends in logits, and the run's precision policy on every layer (the output in float32).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import tf_keras as keras

from compactcnn.config import DataConfig, ModelConfig, NormalizeConfig
from compactcnn.data import IMAGE_SHAPE
from compactcnn.errors import UserError
from compactcnn.models import external, graph, normalization, registry

CHANNELS = IMAGE_SHAPE[2]
OUTPUT_NAME = "probabilities"


@dataclass
class ModelPlan:
    """What `model.name` points at, resolved, and the image size the run uses.

    Attributes:
        name: `model.name` as configured.
        source: `registered`, `file` or `builder`.
        image_size: (height, width) of every image and of the model's input.
        options: The registered model's options (`zero_init_residual`, `width`).
        loaded: The loaded model of a `.keras` file (built outside any strategy scope).
        builder: The imported builder function.
    """

    name: str
    source: str
    image_size: tuple[int, int]
    options: dict[str, Any] = field(default_factory=dict)
    loaded: keras.Model | None = None
    builder: Callable[..., keras.Model] | None = None

    @property
    def input_shape(self) -> tuple[int, int, int]:
        """(height, width, 3)."""
        return (*self.image_size, CHANNELS)

    def build(
        self, num_classes: int, normalize: NormalizeConfig, policy: str = "float32"
    ) -> tuple[keras.Model, dict[str, Any]]:
        """Builds the training model; call it inside the strategy's scope.

        Args:
            num_classes: Classes of the data.
            normalize: `data.normalize`, prepended to a user model without its own.
            policy: The global precision policy the run trains under.

        Returns:
            The model (raw pixels in, class probabilities out) and what was done to get it,
            for metrics.json: `source`, `name`, `input_shape`, `normalization`, and `flattened`
            and `output` when a user model needed them.

        Raises:
            UserError: When the model's output does not fit the data or the loss, when
                `data.normalize` is set for a model that normalizes itself, or when a nested
                model cannot be flattened.
        """
        report: dict[str, Any] = {
            "source": self.source,
            "name": self.name,
            "input_shape": list(self.input_shape),
        }
        if self.source == "registered":
            if normalization.is_set(normalize):
                raise UserError(
                    f"data.normalize is set, but the built-in model '{self.name}' normalizes its "
                    "input itself (pixels to [-1, 1]); remove data.normalize"
                )
            model = registry.create_model(self.name, num_classes, self.input_shape, **self.options)
            report["normalization"] = "the model's own Rescaling 'normalize'"
            return model, report
        if self.loaded is not None:
            model = self.loaded
        else:
            model = external.call_builder(self.builder, self.name, num_classes, self.input_shape)
        model_graph = graph.Graph.of(model)
        flattened = graph.flatten(model_graph)
        graph.set_input_shape(model_graph, self.input_shape)
        report["normalization"] = normalization.apply(model_graph, normalize, self.name)
        if _needs_softmax(model_graph, self.name):
            graph.append(
                model_graph, keras.layers.Activation("softmax", dtype="float32"), OUTPUT_NAME
            )
            report["output"] = "softmax appended to the logits"
        if flattened:
            report["flattened"] = flattened
        graph.set_policy(model_graph, policy)
        built = model_graph.build()
        _check_classes(built, num_classes, self.name)
        return built, report

    def baseline_key(self, float_model: keras.Model, num_classes: int) -> str:
        """Names the architecture of the compression baseline, for its size cache.

        A registered model is named by its name, classes, size and width; a user model by a
        digest of its Functional config.
        """
        height, width = self.image_size
        if self.source == "registered":
            model_width = self.options.get("width")
            suffix = f"-w{model_width:g}" if model_width is not None else ""
            return f"{self.name}-{num_classes}-{height}x{width}{suffix}"
        architecture = json.dumps(float_model.get_config(), sort_keys=True, default=str)
        digest = hashlib.sha256(architecture.encode()).hexdigest()[:16]
        return f"user-{digest}-{num_classes}-{height}x{width}"

    def dense_baseline(self, float_model: keras.Model, num_classes: int) -> keras.Model:
        """A freshly initialized float32 model of this architecture: the compression baseline.

        A registered model is built again (without `zero_init_residual`, whose zero BN scales
        would fold into zero kernels); a user model is rebuilt from the float model's config.
        """
        if self.source == "registered":
            width = self.options.get("width")
            return registry.create_model(self.name, num_classes, self.input_shape, width=width)
        return graph.Graph.of(float_model).build(copy_weights=False)


def resolve(model_config: ModelConfig, data_config: DataConfig) -> ModelPlan:
    """Finds what `model.name` points at and the image size of the run.

    Args:
        model_config: The `model` section.
        data_config: The `data` section (`image_size`).

    Returns:
        The plan; a `.keras` file is loaded and a builder imported, nothing else is built.

    Raises:
        UserError: On an unknown name, a file that does not load, a builder that does not
            import, model options a user model cannot take, or an input shape that disagrees
            with `data.image_size`.
    """
    name = model_config.name
    wanted = tuple(data_config.image_size) if data_config.image_size else None
    if registry.is_registered(name):
        size = wanted or registry.default_input_shape(name)[:2]
        options = {
            "zero_init_residual": model_config.zero_init_residual,
            "width": model_config.width,
        }
        return ModelPlan(name, "registered", size, options=options)
    if not (external.is_builder(name) or external.is_file(name)):
        raise UserError(
            f"unknown model '{name}'; choose one of {', '.join(registry.list_models())}, a saved "
            "model path/to/model.keras or a builder package.module:function"
        )
    if model_config.zero_init_residual or model_config.width is not None:
        key = "model.width" if model_config.width is not None else "model.zero_init_residual"
        raise UserError(
            f"{key} applies to the built-in models, not to '{name}'; remove it and build the "
            "model as you want it"
        )
    if external.is_builder(name):
        builder = external.import_builder(name)
        return ModelPlan(name, "builder", wanted or IMAGE_SHAPE[:2], builder=builder)
    loaded = external.load_file(name)
    return ModelPlan(name, "file", _file_image_size(loaded, name, wanted), loaded=loaded)


def _file_image_size(
    model: keras.Model, name: str, wanted: tuple[int, int] | None
) -> tuple[int, int]:
    """The image size of a loaded model: its own input's, which must agree with the config's."""
    shape = model.input_shape
    if isinstance(shape, list):
        raise UserError(f"model '{name}' has {len(shape)} inputs; compactcnn feeds one image input")
    if len(shape) != 4:
        raise UserError(
            f"model '{name}' takes inputs of shape {tuple(shape[1:])}; compactcnn feeds images "
            "(height, width, 3)"
        )
    height, width, channels = shape[1:]
    if channels not in (CHANNELS, None):
        raise UserError(
            f"model '{name}' takes {channels}-channel images; compactcnn feeds RGB images, so "
            "build it for 3 channels"
        )
    if height is None or width is None:
        return wanted or IMAGE_SHAPE[:2]  # a model for any size is built at the run's size
    if wanted is not None and wanted != (height, width):
        raise UserError(
            f"model '{name}' takes {height}x{width} images but data.image_size is "
            f"{list(wanted)}; set data.image_size to [{height}, {width}] (or remove it) or use "
            f"a model built for {wanted[0]}x{wanted[1]}"
        )
    return (height, width)


def _needs_softmax(model_graph: graph.Graph, name: str) -> bool:
    """Whether the output is logits (a softmax is appended) rather than probabilities.

    Raises:
        UserError: When the output layer ends in another activation.
    """
    output = model_graph.sources.get(model_graph.output_reference()[0])
    if isinstance(output, keras.layers.Softmax):
        return False
    activation = getattr(output, "activation", None)
    function = keras.activations.serialize(activation) if activation is not None else None
    if isinstance(function, dict):
        function = function.get("config", function.get("class_name"))
    if function == "softmax":
        return False
    if function == "linear":
        return True
    ends_in = f"activation '{function}'" if function else f"a {type(output).__name__}"
    raise UserError(
        f"model '{name}' ends in {ends_in}, not a softmax; compactcnn trains on class "
        "probabilities: end it with a softmax, or with a Dense without activation (logits), "
        "which gets one"
    )


def _check_classes(model: keras.Model, num_classes: int, name: str) -> None:
    shape = model.output_shape
    if len(shape) != 2 or shape[-1] != num_classes:
        raise UserError(
            f"model '{name}' outputs shape {tuple(shape[1:])}, but the data has {num_classes} "
            "classes; give it a final Dense of that many units (a builder gets num_classes)"
        )
