"""Convert a PyTorch CIFAR checkpoint (TRADES / RobustBench / kuangliu layout) to a `.keras` file.

The Keras models of `dgad_tf.models` name every weight layer after the PyTorch module path of
the reference network, so conversion is a by-name copy with layout changes: conv kernels
OIHW -> HWIO, depthwise kernels (C, 1, H, W) -> (H, W, C, 1), linear weights [out, in] ->
[in, out], and BatchNorm weight/bias/running_mean/running_var -> gamma/beta/moving_mean/
moving_variance. Anything that does not match exactly (a missing or unexpected tensor, a shape,
the class count) is refused before anything is written.

Its command line is `python -m dgad_tf.teachers.convert` (`dgad_tf/teachers/convert.py`).
"""

import logging
import pathlib

import numpy as np

logger = logging.getLogger(__name__)

# Keys under which training scripts commonly nest the state dict, tried in this order.
NESTING_KEYS = ("state_dict", "model_state_dict", "net", "model", "state_dict_ema")
# Prefixes added by nn.DataParallel / DistributedDataParallel and torch.compile.
WRAPPER_PREFIXES = ("module.", "_orig_mod.")
# Buffer names under which robust checkpoints store their input normalisation (mean, std).
NORMALIZATION_KEYS = (
    ("mu", "sigma"),
    ("mean", "std"),
    ("normalize.mean", "normalize.std"),
    ("norm.mean", "norm.std"),
    ("normalizer.mean", "normalizer.std"),
)
_TORCH_HINT = "Reading PyTorch checkpoints needs PyTorch: pip install -e .[torch]"


class ConversionError(ValueError):
    """The checkpoint does not match the requested architecture; nothing was written."""


def load_state_dict(path):
    """Read a checkpoint and return its tensors as a flat {name: float32 ndarray} dict.

    Accepts `.safetensors` files and `torch.save` files (loaded with `weights_only=True` on the
    CPU) holding a bare state dict or one nested under a key such as 'state_dict', 'net',
    'model' or 'model_state_dict'. DataParallel's `module.` prefix is stripped; integer
    tensors (e.g. `num_batches_tracked`) are kept as they are and dropped by the caller.

    Args:
        path: checkpoint file.
    """
    path = pathlib.Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"`path` is not a file; received path={str(path)!r}")
    if path.suffix == ".safetensors":
        try:
            from safetensors.numpy import load_file
        except ImportError:
            raise ImportError(f"{_TORCH_HINT} (safetensors)") from None
        try:
            raw = load_file(str(path))
        except Exception as err:  # safetensors raises its own SafetensorError
            raise _not_a_checkpoint(path, "safetensors", err) from None
    else:
        try:
            import torch
        except ImportError:
            raise ImportError(_TORCH_HINT) from None
        try:
            raw = torch.load(str(path), map_location="cpu", weights_only=True)
        except Exception as err:  # unpickling fails in many ways: KeyError, EOFError, ...
            raise _not_a_checkpoint(path, "torch.save", err) from None
        raw = _unnest(raw, path)
        raw = {key: _tensor_to_numpy(value, key) for key, value in raw.items()}
    return _strip_wrapper_prefixes(raw)


def _not_a_checkpoint(path, kind, err):
    detail = str(err).strip().splitlines()[0][:200] if str(err).strip() else ""
    return ConversionError(
        f"{path} is not a readable {kind} checkpoint ({type(err).__name__}"
        + (f": {detail}" if detail else "")
        + "); pass the file PyTorch's torch.save or safetensors wrote"
    )


def _unnest(checkpoint, path):
    """Descend through the nesting keys until a dict of tensors is reached."""
    import torch

    while isinstance(checkpoint, dict):
        if checkpoint and all(isinstance(v, torch.Tensor) for v in checkpoint.values()):
            return checkpoint
        nested = next((k for k in NESTING_KEYS if isinstance(checkpoint.get(k), dict)), None)
        if nested is None:
            break
        logger.info("Using the state dict nested under %r", nested)
        checkpoint = checkpoint[nested]
    raise ConversionError(
        f"{path} holds no state dict: expected a dict of tensors, possibly nested under one of "
        f"{', '.join(map(repr, NESTING_KEYS))}; found {_describe(checkpoint)}"
    )


def _describe(value):
    if isinstance(value, dict):
        keys = list(value)[:8]
        return f"a dict with keys {keys}{' ...' if len(value) > 8 else ''}"
    return f"a {type(value).__name__}"


def _tensor_to_numpy(tensor, key):
    import torch

    if not isinstance(tensor, torch.Tensor):
        raise ConversionError(f"checkpoint entry {key!r} is not a tensor but {_describe(tensor)}")
    tensor = tensor.detach().cpu()
    if tensor.is_floating_point():
        # bfloat16/float16 have no exact NumPy route other than through float32.
        tensor = tensor.float()
    return tensor.numpy()


def _strip_wrapper_prefixes(state):
    stripped = {}
    for key, value in state.items():
        name = key
        while name.startswith(WRAPPER_PREFIXES):
            name = name.split(".", 1)[1]
        if name in stripped:
            raise ConversionError(
                f"checkpoint has tensor {name!r} twice (with and without a wrapper prefix)"
            )
        stripped[name] = value
    return stripped


def _is_ignored(name):
    """TRADES' unused `sub_block1` and BN batch counters do not enter the Keras model."""
    return name.startswith("sub_block1.") or name.endswith("num_batches_tracked")


def _pop_normalization(state):
    """Remove in-model normalisation buffers from `state`; return (mean, std, key names) or None."""
    for mean_key, std_key in NORMALIZATION_KEYS:
        if mean_key in state and std_key in state:
            mean = np.asarray(state.pop(mean_key), np.float64).reshape(-1)
            std = np.asarray(state.pop(std_key), np.float64).reshape(-1)
            return mean, std, (mean_key, std_key)
    return None


def _keras_to_torch_names(layer):
    """Return [(torch key, keras weight index, to_keras transform, to_torch shape)] for a layer."""
    import keras

    name = layer.name
    if isinstance(layer, keras.layers.BatchNormalization):
        suffixes = ("weight", "bias", "running_mean", "running_var")
        return [(f"{name}.{s}", i, _identity, _identity_shape) for i, s in enumerate(suffixes)]
    if isinstance(layer, keras.layers.DepthwiseConv2D):
        # PyTorch depthwise weight (C, 1, kh, kw) <-> Keras (kh, kw, C, 1).
        return [
            (
                f"{name}.weight",
                0,
                lambda w: w.transpose(2, 3, 0, 1),
                lambda s: (s[2], s[3], s[0], s[1]),
            )
        ]
    if isinstance(layer, keras.layers.Conv2D):
        entries = [
            (
                f"{name}.weight",
                0,
                lambda w: w.transpose(2, 3, 1, 0),
                lambda s: (s[3], s[2], s[0], s[1]),
            )
        ]
    elif isinstance(layer, keras.layers.Dense):
        entries = [(f"{name}.weight", 0, lambda w: w.T, lambda s: (s[1], s[0]))]
    else:
        raise ConversionError(
            f"layer {name!r} of type {type(layer).__name__} has no PyTorch mapping"
        )
    if layer.use_bias:
        entries.append((f"{name}.bias", 1, _identity, _identity_shape))
    return entries


def _listing(names, limit=50):
    """Comma-separated names, cut after `limit` so a wrong `--arch` stays readable."""
    shown = ", ".join(names[:limit])
    return shown if len(names) <= limit else f"{shown}, ... ({len(names) - limit} more)"


def _identity(w):
    return w


def _identity_shape(shape):
    return tuple(shape)


def _build(arch, num_classes, input_shape, normalize, state):
    """Build the Keras model for `arch`; a PreActResNet18 with `bn.*` tensors gets the final BN."""
    from dgad_tf.models import build_model, canonical_model_name
    from dgad_tf.models.preact_resnet import build_preact_resnet

    canonical = canonical_model_name(arch)
    if canonical == "preact-resnet-18" and "bn.weight" in state:
        logger.info("Final 'bn.*' tensors: using the RobustBench PreActResNet18 layout (final BN)")
        return build_preact_resnet(18, num_classes, input_shape, normalize=normalize, final_bn=True)
    return build_model(canonical, num_classes, input_shape, normalize=normalize)


def convert_state_dict(state, arch, num_classes, *, normalize=None, input_shape=(32, 32, 3)):
    """Build the Keras model for `arch` and load a PyTorch state dict into it.

    Args:
        state: {name: ndarray} as returned by `load_state_dict` (wrapper prefixes stripped).
        arch: model name understood by `dgad_tf.models.build_model` (e.g. "wrn-34-10").
        num_classes: expected number of classes; the checkpoint's classifier must agree.
        normalize: optional (mean, std) to build into the model. When the checkpoint carries
            its own normalisation buffers (`mu`/`sigma`, `mean`/`std`) these are used, and an
            explicit value must agree with them. Defaults to None.
        input_shape: (H, W, C) the Keras model is built for. Defaults to (32, 32, 3).

    Returns:
        (model, report): the Keras model and a dict describing what was found
        (`normalize`, `normalize_source`, `ignored` tensor names).

    Raises:
        ConversionError: on missing, unexpected or mis-shaped tensors or a class-count mismatch.
    """
    from dgad_tf.models import _common

    state = dict(state)
    ignored = sorted(name for name in state if _is_ignored(name))
    for name in ignored:
        del state[name]
    report = {"ignored": ignored, "normalize": None, "normalize_source": None}

    found = _pop_normalization(state)
    channels = int(input_shape[-1])
    if found is not None:
        mean, std, keys = found
        try:
            found_mean, found_std = _common.check_normalize((mean, std), channels)
        except ValueError as err:
            raise ConversionError(
                f"checkpoint normalisation buffers {keys} are unusable: {err}"
            ) from None
        logger.info(
            "Found normalisation buffers %s: mean=%s std=%s",
            keys,
            np.round(found_mean, 6).tolist(),
            np.round(found_std, 6).tolist(),
        )
        if normalize is not None:
            given_mean, given_std = _common.check_normalize(normalize, channels)
            if not (
                np.allclose(given_mean, found_mean, atol=1e-6)
                and np.allclose(given_std, found_std, atol=1e-6)
            ):
                raise ConversionError(
                    f"the checkpoint normalises inputs itself ({keys[0]}={found_mean.tolist()}, "
                    f"{keys[1]}={found_std.tolist()}) but a different `normalize` was given "
                    f"(mean={given_mean.tolist()}, std={given_std.tolist()}); "
                    "drop the explicit values"
                )
        normalize = (found_mean, found_std)
        report["normalize_source"] = f"checkpoint buffers {keys[0]!r}/{keys[1]!r}"
    elif normalize is not None:
        normalize = _common.check_normalize(normalize, channels)
        report["normalize_source"] = "given"
    report["normalize"] = (
        None if normalize is None else (normalize[0].tolist(), normalize[1].tolist())
    )

    model = _build(arch, num_classes, input_shape, normalize, state)

    import keras

    weight_layers = [
        layer
        for layer in model.layers
        if layer.weights and not isinstance(layer, keras.layers.Normalization)
    ]
    classifier = weight_layers[-1]
    classifier_key = f"{classifier.name}.weight"
    if classifier_key in state and np.ndim(state[classifier_key]) == 2:
        found_classes = state[classifier_key].shape[0]
        if found_classes != num_classes:
            raise ConversionError(
                f"the checkpoint has {found_classes} classes ({classifier_key!r} has shape "
                f"{tuple(state[classifier_key].shape)}) but num_classes={num_classes}"
            )

    plan = [(layer, entry) for layer in weight_layers for entry in _keras_to_torch_names(layer)]
    expected = {entry[0] for _, entry in plan}
    missing = sorted(expected - set(state))
    unexpected = sorted(set(state) - expected)
    if missing or unexpected:
        parts = []
        if missing:
            parts.append(f"missing tensors ({len(missing)}): {_listing(missing)}")
        if unexpected:
            parts.append(f"unexpected tensors ({len(unexpected)}): {_listing(unexpected)}")
        raise ConversionError(f"checkpoint does not match {model.name}: " + "; ".join(parts))

    values = {layer.name: list(layer.get_weights()) for layer in weight_layers}
    for layer, (key, index, to_keras, to_torch_shape) in plan:
        keras_shape = tuple(values[layer.name][index].shape)
        want = tuple(to_torch_shape(keras_shape))
        got = tuple(state[key].shape)
        if got != want:
            raise ConversionError(
                f"shape mismatch for tensor {key!r}: checkpoint has {got}, "
                f"{model.name} expects {want}"
            )
        values[layer.name][index] = np.ascontiguousarray(
            to_keras(np.asarray(state[key], np.float32))
        )
    for layer in weight_layers:
        layer.set_weights(values[layer.name])
    return model, report


def convert_checkpoint(
    path, arch, num_classes, out_path=None, normalize=None, *, input_shape=(32, 32, 3)
):
    """Convert a PyTorch checkpoint into a Keras model, optionally saving it as `.keras`.

    The output file is written atomically (a temporary file in the same directory, then
    `os.replace`), and only once every check has passed.

    Args:
        path: `.pt`/`.pth` (torch.save) or `.safetensors` checkpoint.
        arch: model name, e.g. "wrn-34-10", "resnet-18", "preact-resnet-18", "mobilenetv2".
        num_classes: number of classes of the checkpoint's classifier.
        out_path: where to save the `.keras` file; None keeps the model in memory only.
            Defaults to None.
        normalize: optional (mean, std) in-model normalisation, see `convert_state_dict`.
            Defaults to None.
        input_shape: (H, W, C) the Keras model is built for. Defaults to (32, 32, 3).

    Returns:
        The converted `keras.Model` (logits out, [0, 1] pixels in).

    Example:
        >>> model = convert_checkpoint("trades_wrn34.pt", "wrn-34-10", 10, "teacher.keras")
    """
    model, _ = convert_checkpoint_with_report(
        path, arch, num_classes, out_path, normalize, input_shape=input_shape
    )
    return model


def convert_checkpoint_with_report(
    path, arch, num_classes, out_path=None, normalize=None, *, input_shape=(32, 32, 3)
):
    """`convert_checkpoint` that also returns the report of `convert_state_dict`.

    The command line prints the report (normalisation and its source, ignored tensors).

    Args:
        path: `.pt`/`.pth` (torch.save) or `.safetensors` checkpoint.
        arch: model name, e.g. "wrn-34-10".
        num_classes: number of classes of the checkpoint's classifier.
        out_path: where to save the `.keras` file; None keeps the model in memory only.
            Defaults to None.
        normalize: optional (mean, std) in-model normalisation. Defaults to None.
        input_shape: (H, W, C) the Keras model is built for. Defaults to (32, 32, 3).

    Returns:
        (the converted `keras.Model`, the report dict of `convert_state_dict`).
    """
    if out_path is not None and not str(out_path).endswith(".keras"):
        raise ValueError(f"`out_path` must end with '.keras'; received out_path={str(out_path)!r}")
    state = load_state_dict(path)
    model, report = convert_state_dict(
        state, arch, num_classes, normalize=normalize, input_shape=input_shape
    )
    if out_path is not None:
        save_atomically(model, out_path)
    return model, report


def save_atomically(model, out_path):
    """Save `model` to `out_path` (.keras) without ever leaving a partial file there."""
    from dgad_tf.rundir import save_model_atomic

    save_model_atomic(model, out_path)
