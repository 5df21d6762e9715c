"""Mixed precision for the train step: one Keras dtype policy for student and teacher.

`train.precision` is "float32" (default), "mixed_bfloat16" (GPUs with bfloat16: A100, H100,
H200; TPUs) or "mixed_float16" (older GPUs; the optimizer then scales the loss). Under a mixed
policy the layers compute in 16 bits and keep float32 variables; the logits layer stays float32,
and every loss, KL, softmax and the attack's sign step are computed in float32 (`losses` and
`attacks` cast logits first), so only the networks' arithmetic changes.

Checkpoints and exports are always float32 networks (`with_policy(model, "float32")`): a
mixed-precision run's students load, evaluate and export like any other.

Example:
    >>> student = with_policy(build_model("resnet-18", 10), "mixed_bfloat16")
"""

from __future__ import annotations

import copy

import keras

from dgad_tf.config import PRECISIONS


def policy_name(model: keras.Model) -> str:
    """The dtype policy of `model`'s layers ("float32" unless a mixed policy was applied)."""
    names = {layer.dtype_policy.name for layer in model.layers[1:-1]}
    return names.pop() if len(names) == 1 else "float32"


def with_policy(model: keras.Model, policy: str) -> keras.Model:
    """`model` rebuilt with every layer but the logits layer under `policy`, same weights.

    Returns `model` itself when it already has that policy. The input layer keeps float32
    images and the last layer computes float32 logits.

    Args:
        model: a functional Keras model.
        policy: one of `PRECISIONS`.
    """
    if policy not in PRECISIONS:
        raise ValueError(
            f"`policy` must be one of {', '.join(PRECISIONS)}; received policy={policy!r}"
        )
    if policy_name(model) == policy:
        return model
    config = copy.deepcopy(model.get_config())
    last = config["layers"][-1]["config"]["name"]
    for layer in config["layers"]:
        if layer["class_name"] == "InputLayer" or layer["config"]["name"] == last:
            continue
        _set_policy(layer["config"], policy)
    rebuilt = model.__class__.from_config(config)
    rebuilt.set_weights(model.get_weights())
    return rebuilt


def _set_policy(layer_config: dict, policy: str) -> None:
    dtype = layer_config.get("dtype")
    if isinstance(dtype, dict) and dtype.get("class_name") == "DTypePolicy":
        dtype["config"]["name"] = policy
    # Layers that wrap others (e.g. a nested model) carry their own layer configs.
    for inner in layer_config.get("layers", []):
        if inner.get("class_name") != "InputLayer":
            _set_policy(inner["config"], policy)


def resolve_jit_compile(setting) -> bool:
    """`train.jit_compile` as a bool: "auto" is XLA where a GPU is visible, not on CPU."""
    if setting == "auto":
        import tensorflow as tf

        return bool(tf.config.list_physical_devices("GPU"))
    return bool(setting)


def loss_scaled(optimizer: keras.optimizers.Optimizer, policy: str):
    """`optimizer`, wrapped in Keras's dynamic loss scaling when `policy` is mixed_float16."""
    if policy == "mixed_float16":
        return keras.optimizers.LossScaleOptimizer(optimizer)
    return optimizer
