"""The crackseg ONNX model: one file every engine runs and PyTorch can load back, read and prepared without torch.

A crackseg ONNX file holds the network with its batch norms unfused, so every parameter and buffer keeps its
state-dict name as an initializer (`state_dict` reads them back for PyTorch; the runtimes fuse them on loading).
Weights that float16
represents exactly are stored in float16 behind a Cast to float32: half the size for models saved in float16 (the
shipped ones), nothing changed for others. The spatial size is free where the network allows (U-Net) and fixed where
pyramid pooling's bins need it (PSPNet). The model's config travels as metadata (``crackseg_config``).

`runnable` turns such a file into what the engines run: float32 weights and the tile size fixed.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np

from crackseg.models.config import ModelConfig, ModelError

CONFIG_KEY = "crackseg_config"
FLOAT, FLOAT16 = 1, 10  # onnx.TensorProto data types


def load(path: str | os.PathLike | bytes):
    import onnx

    try:
        return onnx.load_from_string(path) if isinstance(path, bytes) else onnx.load(str(path))
    except Exception as err:
        raise ModelError(f"{path}: not a readable ONNX model ({type(err).__name__}); export it again") from None


def metadata(model) -> dict[str, str]:
    return {prop.key: prop.value for prop in model.metadata_props}


def set_metadata(model, values: dict[str, str]) -> None:
    import onnx

    onnx.helper.set_model_props(model, {**metadata(model), **values})


def read_metadata(path: str | os.PathLike) -> dict[str, str]:
    return metadata(load(path))


def read_config(path: str | os.PathLike) -> ModelConfig:
    """The config embedded in a crackseg ONNX file."""
    props = read_metadata(path)
    if CONFIG_KEY not in props:
        raise ModelError(f"{path}: an ONNX model without a crackseg config; export it with `crackseg export`")
    return ModelConfig.from_dict(json.loads(props[CONFIG_KEY]))


def input_size(model) -> int | None:
    """The fixed tile size of a model's input, or None when the spatial size is free."""
    dims = model.graph.input[0].type.tensor_type.shape.dim
    values = [dim.dim_value if dim.HasField("dim_value") else None for dim in dims[2:]]
    return values[0] if values and None not in values and values[0] == values[1] else None


def shrink(model) -> int:
    """Drop the exporter's debugging notes (node doc strings and metadata, intermediate shapes) and store the weights
    float16 represents exactly in float16; returns how many were halved."""
    for node in model.graph.node:
        node.doc_string = ""
        del node.metadata_props[:]
    del model.graph.value_info[:]
    return half_weights(model)


def half_weights(model) -> int:
    """Store every float32 initializer that float16 represents exactly as float16 behind a Cast; returns how many."""
    import onnx
    from onnx import numpy_helper

    consumers = {}
    for node in model.graph.node:
        for index, name in enumerate(node.input):
            consumers.setdefault(name, []).append((node, index))
    casts, halved = [], 0
    for init in model.graph.initializer:
        if init.data_type != FLOAT:
            continue
        values = numpy_helper.to_array(init)
        half = values.astype(np.float16)
        if values.size < 2 or not np.array_equal(half.astype(np.float32), values):
            continue
        upcast = f"{init.name}__float32"
        for node, index in consumers.get(init.name, []):
            node.input[index] = upcast
        init.CopyFrom(numpy_helper.from_array(half, init.name))
        casts.append(onnx.helper.make_node("Cast", [init.name], [upcast], to=FLOAT, name=f"{init.name}__cast"))
        halved += 1
    for cast in reversed(casts):  # before every consumer: graph inputs come first in topological order
        model.graph.node.insert(0, cast)
    return halved


def upcast_weights(model) -> None:
    """Undo `half_weights`: float32 initializers in place of each float16 one and its Cast."""
    from onnx import numpy_helper

    initializers = {init.name: init for init in model.graph.initializer}
    kept = []
    for node in model.graph.node:
        source = initializers.get(node.input[0]) if node.op_type == "Cast" and node.input else None
        if source is None or source.data_type != FLOAT16:
            kept.append(node)
            continue
        values = numpy_helper.to_array(source).astype(np.float32)
        source.CopyFrom(numpy_helper.from_array(values, node.output[0]))
    del model.graph.node[:]
    model.graph.node.extend(kept)


def free_batch_norms(model) -> None:
    """Let every batch norm be fused into its convolution: a `Shape` that reads a batch norm's input reads its output
    instead (the same shape).

    The exporter reads the shapes of some convolutions' outputs, and ONNX Runtime fuses a batch norm only into a
    convolution whose output nothing else reads; left unfused, its int8 quantizer rounds those convolutions' outputs
    before their batch norms. Each such batch norm moves up to just after its input's producer (its other inputs are
    weights), so the shapes read from its output are still read after it is computed."""
    nodes = list(model.graph.node)
    shape_reads = {node.input[0] for node in nodes if node.op_type == "Shape"}
    moving = [node for node in nodes if node.op_type == "BatchNormalization" and node.input[0] in shape_reads]
    for norm in moving:
        nodes.remove(norm)
        producer = next((i for i, node in enumerate(nodes) if norm.input[0] in node.output), -1)
        nodes.insert(producer + 1, norm)
    output_of = {norm.input[0]: norm.output[0] for norm in moving}
    for node in nodes:
        if node.op_type == "Shape" and node.input[0] in output_of:
            node.input[0] = output_of[node.input[0]]
    del model.graph.node[:]
    model.graph.node.extend(nodes)


def runnable(source: str | os.PathLike | bytes, tile: int) -> bytes:
    """The model of a crackseg ONNX file (path or bytes) as the engines run it: float32 weights, `tile`×`tile`
    inputs of any batch size."""
    import onnx
    from onnx.tools.update_model_dims import update_inputs_outputs_dims

    model = load(source)
    fixed = input_size(model)
    if fixed is not None and fixed != tile:
        name = "this model" if isinstance(source, bytes) else str(source)
        raise ModelError(f"{name} runs tiles of {fixed} px only; pass --tile {fixed}, or export it again at {tile}")
    props = metadata(model)
    upcast_weights(model)
    free_batch_norms(model)
    model = update_inputs_outputs_dims(
        model,
        {model.graph.input[0].name: ["batch", 3, tile, tile]},
        {model.graph.output[0].name: ["batch", 1, tile, tile]},
    )
    set_metadata(model, {**props, "tile": str(tile)})
    onnx.checker.check_model(model)
    return model.SerializeToString()


def state_dict(path: str | os.PathLike) -> dict[str, np.ndarray]:
    """The float32 weights a crackseg ONNX file holds under their state-dict names (all its named initializers)."""
    from onnx import numpy_helper

    model = load(path)
    return {
        init.name: numpy_helper.to_array(init).astype(np.float32, copy=False)
        if init.data_type in (FLOAT, FLOAT16)
        else numpy_helper.to_array(init)
        for init in model.graph.initializer
    }


def is_onnx(path: str | os.PathLike) -> bool:
    return Path(path).suffix.lower() == ".onnx"
