"""Editing a Functional model's graph: flatten nested models, add a first or last layer, fix the
input shape, change the precision policy; then rebuild it with its weights.

Keras has no public way to insert a layer in front of a model without nesting the model (and
tfmot wraps only top-level layers), so the edits work on the model's Functional config, the same
JSON `model.get_config()` returns and `keras.Model.from_config` reads. Each layer of the rebuilt
model takes its weights from the layer it came from, matched by name.

A node reference in the config is `[layer_name, node_index, tensor_index, call_kwargs]`: the
`node_index`-th call of that layer in this graph. Every layer compactcnn rebuilds is called once,
so node indices are 0 except in references to a nested model, whose first call is its own graph.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import tf_keras as keras

from compactcnn.errors import UserError

# What Keras names a Functional or Sequential model inside another model's config.
_MODEL_CLASSES = ("Functional", "Sequential", "Model")


@dataclass
class Graph:
    """A Functional config being edited, and where each of its layers takes its weights from.

    Attributes:
        config: The Functional config (`name`, `layers`, `input_layers`, `output_layers`).
        sources: {layer name in `config`: the live layer whose weights it takes}.
    """

    config: dict[str, Any]
    sources: dict[str, keras.layers.Layer] = field(default_factory=dict)

    @classmethod
    def of(cls, model: keras.Model) -> Graph:
        """The graph of a Functional or Sequential model (a Sequential is read as Functional).

        Raises:
            UserError: For a subclassed model, which has no graph to edit.
        """
        if isinstance(model, keras.Sequential):
            if not model.built or not model.inputs:
                raise UserError(
                    f"Sequential model '{model.name}' has no input shape; start it with "
                    "keras.Input((height, width, 3))"
                )
            model = keras.Model(model.inputs, model.outputs, name=model.name)
        try:
            config = model.get_config() or {}
        except NotImplementedError:  # a subclassed model that defines no config
            config = {}
        # Only a Functional model's config describes its graph.
        if not {"layers", "input_layers", "output_layers"} <= set(config):
            raise UserError(
                f"model '{model.name}' is a subclassed keras.Model; compactcnn needs a Functional "
                "or Sequential model (tfmot wraps their layers only)"
            )
        return cls(config, {layer.name: layer for layer in model.layers})

    @property
    def layers(self) -> list[dict[str, Any]]:
        """The layer entries of the config, in order."""
        return self.config["layers"]

    def names(self) -> set[str]:
        """The layer names in use."""
        return {entry["name"] for entry in self.layers}

    def unique_name(self, wanted: str) -> str:
        """`wanted`, or `wanted_2`, `wanted_3`... when the name is taken."""
        taken = self.names()
        name, number = wanted, 1
        while name in taken:
            number += 1
            name = f"{wanted}_{number}"
        return name

    def entry(self, name: str) -> dict[str, Any]:
        """The config entry of the layer called `name`."""
        return next(entry for entry in self.layers if entry["name"] == name)

    def input_name(self) -> str:
        """The name of the one input layer.

        Raises:
            UserError: When the model has several inputs.
        """
        inputs = self.config["input_layers"]
        if len(inputs) != 1:
            raise UserError(
                f"model '{self.config['name']}' has {len(inputs)} inputs; compactcnn feeds one "
                "image input"
            )
        return inputs[0][0]

    def output_reference(self) -> list:
        """The one output, `[layer_name, node_index, tensor_index]`.

        Raises:
            UserError: When the model has several outputs.
        """
        outputs = self.config["output_layers"]
        if len(outputs) != 1:
            raise UserError(
                f"model '{self.config['name']}' has {len(outputs)} outputs; compactcnn trains "
                "one class-probability output"
            )
        return list(outputs[0])

    def consumers(self, name: str) -> list[dict[str, Any]]:
        """The entries of the layers that take an output of layer `name`."""
        return [
            entry
            for entry in self.layers
            if any(reference[0] == name for reference in _references(entry["inbound_nodes"]))
        ]

    def build(self, copy_weights: bool = True) -> keras.Model:
        """Rebuilds the model from the config, under the current strategy scope.

        Args:
            copy_weights: Give each layer the weights of its source; False keeps the freshly
                initialized ones.
        """
        # A builder's own layer classes are not registered with Keras: name them by class.
        classes = {type(layer).__name__: type(layer) for layer in self.sources.values()}
        model = keras.Model.from_config(copy.deepcopy(self.config), custom_objects=classes)
        if copy_weights:
            for layer in model.layers:
                source = self.sources.get(layer.name)
                if source is not None and source.weights:
                    layer.set_weights(source.get_weights())
        return model


def serialize(layer: keras.layers.Layer, name: str, inbound: list) -> dict[str, Any]:
    """A config entry for a new layer called `name` whose one call takes `inbound` references."""
    entry = keras.layers.serialize(layer)
    entry["config"]["name"] = name
    entry["name"] = name
    entry["inbound_nodes"] = [[[*reference[:3], {}] for reference in inbound]]
    return entry


def set_input_shape(graph: Graph, shape: tuple[int, ...]) -> None:
    """Fixes the input to `(None, *shape)` float32, so every exported file has one static shape."""
    entry = graph.entry(graph.input_name())
    entry["config"]["batch_input_shape"] = [None, *shape]
    entry["config"]["dtype"] = "float32"


def prepend(graph: Graph, layer: keras.layers.Layer, wanted_name: str) -> str:
    """Inserts `layer` between the input and everything that read the input.

    Returns:
        The name the new layer got (`wanted_name`, made unique).
    """
    source = graph.input_name()
    name = graph.unique_name(wanted_name)
    for entry in graph.layers:
        _rename_references(entry["inbound_nodes"], {(source, 0): (name, 0)})
    position = graph.layers.index(graph.entry(source)) + 1
    graph.layers.insert(position, serialize(layer, name, [[source, 0, 0]]))
    return name


def append(graph: Graph, layer: keras.layers.Layer, wanted_name: str) -> str:
    """Adds `layer` after the one output and makes its output the model's.

    Returns:
        The name the new layer got (`wanted_name`, made unique).
    """
    output = graph.output_reference()
    name = graph.unique_name(wanted_name)
    graph.layers.append(serialize(layer, name, [output]))
    graph.config["output_layers"] = [[name, 0, 0]]
    return name


def replace(graph: Graph, name: str, layer: keras.layers.Layer) -> None:
    """Swaps the layer called `name` for `layer` (same name and inputs; it keeps no weights)."""
    entry = graph.entry(name)
    new = serialize(layer, name, [])
    new["inbound_nodes"] = entry["inbound_nodes"]
    graph.layers[graph.layers.index(entry)] = new
    graph.sources.pop(name, None)


def set_policy(graph: Graph, policy: str, outputs_policy: str = "float32") -> None:
    """Sets every layer's precision policy; the layers the outputs come from get `outputs_policy`.

    A mixed policy computes in 16 bits; class probabilities stay float32 for a stable loss (the
    Keras mixed-precision guide), which the built-in models do with a float32 softmax.
    """
    outputs = {reference[0] for reference in graph.config["output_layers"]}
    for entry in graph.layers:
        if entry["class_name"] == "InputLayer":
            continue
        entry["config"]["dtype"] = outputs_policy if entry["name"] in outputs else policy


def flatten(graph: Graph) -> list[str]:
    """Replaces every nested Functional or Sequential model by its layers, in place.

    Returns:
        The names of the models flattened, outermost first.

    Raises:
        UserError: For a nested model that is called more than once, has several inputs or
            outputs, or reuses a layer: its layers cannot simply be spliced in.
    """
    flattened = []
    while True:
        nested = next((e for e in graph.layers if e["class_name"] in _MODEL_CLASSES), None)
        if nested is None:
            return flattened
        _splice(graph, nested)
        flattened.append(nested["name"])


def _splice(graph: Graph, nested: dict[str, Any]) -> None:
    """Replaces one nested model's entry by its own layers' entries."""
    name = nested["name"]

    def refuse(why: str) -> UserError:
        return UserError(
            f"nested model '{name}' {why}, so compactcnn cannot flatten it for tfmot; build "
            "one flat Functional model (call the sub-model's layers directly)"
        )

    if len(nested["inbound_nodes"]) != 1:
        raise refuse(f"is called {len(nested['inbound_nodes'])} times")
    inner = Graph.of(graph.sources[name])
    outer_input = list(_references(nested["inbound_nodes"][0]))
    inner_input = inner.input_name()
    inner_output = inner.output_reference()
    if len(outer_input) != 1:
        raise refuse("takes several tensors")
    if any(len(entry["inbound_nodes"]) > 1 for entry in inner.layers):
        raise refuse("calls one of its layers more than once")
    # Inner layers get unique names in the outer graph; their references follow them.
    taken = graph.names() - {name}
    renames = {}
    for entry in inner.layers:
        new_name = entry["name"]
        if entry["name"] != inner_input and new_name in taken:
            new_name = f"{name}_{entry['name']}"
            while new_name in taken:
                new_name += "_"
        taken.add(new_name)
        renames[entry["name"]] = new_name
    mapping = {(old, 0): (new, 0) for old, new in renames.items()}
    # What read the nested model's input now reads the tensor the nested model was called on.
    called_on = {inner_input: outer_input[0]}
    spliced = []
    trainable = nested["config"].get("trainable", True)
    for entry in inner.layers:
        old = entry["name"]
        if old == inner_input:
            continue
        entry = copy.deepcopy(entry)
        _rename_references(entry["inbound_nodes"], mapping, tensor_of=called_on)
        entry["name"] = entry["config"]["name"] = renames[old]
        if not trainable:  # a frozen sub-model freezes its layers
            entry["config"]["trainable"] = False
        graph.sources[renames[old]] = inner.sources[old]
        spliced.append(entry)
    # What read the nested model's output now reads its last layer.
    output_layer, output_node, output_tensor = inner_output
    target = (renames[output_layer], output_node, output_tensor)
    for entry in graph.layers:
        _redirect(entry["inbound_nodes"], name, target)
    _redirect(graph.config["output_layers"], name, target)
    position = graph.layers.index(nested)
    graph.layers[position : position + 1] = spliced
    graph.sources.pop(name, None)


def _references(nodes: Any) -> list[list]:
    """Every node reference `[name, node_index, tensor_index, ...]` inside an inbound structure."""
    found = []

    def visit(item: Any) -> None:
        if _is_reference(item):
            found.append(item)
        elif isinstance(item, (list, tuple)):
            for child in item:
                visit(child)
        elif isinstance(item, dict):
            for child in item.values():
                visit(child)

    visit(nodes)
    return found


def _is_reference(item: Any) -> bool:
    return (
        isinstance(item, list)
        and len(item) in (3, 4)
        and isinstance(item[0], str)
        and isinstance(item[1], int)
        and isinstance(item[2], int)
    )


def _rename_references(
    nodes: Any,
    mapping: dict[tuple[str, int], tuple[str, int]],
    tensor_of: dict[str, list] | None = None,
) -> None:
    """Points references to (layer, node) at the mapped (layer, node), in place.

    `tensor_of` maps a layer name to a whole reference that replaces it (tensor index too).
    """
    tensor_of = tensor_of or {}
    for reference in _references(nodes):
        key = (reference[0], reference[1])
        if reference[0] in tensor_of:
            reference[:3] = tensor_of[reference[0]][:3]
        elif key in mapping:
            reference[0], reference[1] = mapping[key]


def _redirect(nodes: Any, name: str, target: tuple[str, int, int]) -> None:
    """Points every reference to layer `name` (any node) at the `target` reference, in place."""
    for reference in _references(nodes):
        if reference[0] == name:
            reference[:3] = list(target)


def edit(model: keras.Model, *edits: Callable[[Graph], Any]) -> keras.Model:
    """Applies `edits` to the model's graph and rebuilds it with its weights."""
    graph = Graph.of(model)
    for change in edits:
        change(graph)
    return graph.build()


def with_policy(model: keras.Model, policy: str) -> keras.Model:
    """A copy of a (flat) model with every layer under `policy` and its output layer float32.

    The way to get a float32 model out of a mixed-precision one: `clone_model` alone keeps each
    layer's policy, and a model the user brought has no builder to call again.
    """
    return edit(model, lambda model_graph: set_policy(model_graph, policy))
