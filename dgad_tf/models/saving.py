"""The `.keras` files dgad_tf writes: loadable by plain Keras, restored by dgad_tf.

The zoo trains with `FusedBatchNormalization` (`_common.py`): TensorFlow's fused kernel, and the
moving variance updated with the unbiased batch variance as PyTorch does. Only the training
update differs from Keras's `BatchNormalization`; the weights (gamma, beta, moving mean and
variance), the config and the inference output are Keras's. A file naming the custom class
would load only in a process that has imported dgad_tf ("Could not locate class
'FusedBatchNormalization'"), yet teachers and students are handed to other code and colleagues.

So `save_model` writes every such layer as Keras's own `BatchNormalization` and records which
layers they were in one extra archive member, `dgad_tf.json`. Plain
`keras.saving.load_model(path)` reads `config.json`, `metadata.json` and the weights and ignores
other members: it gives a standard Keras model, safe mode included, with the same logits.
`load_model` reads the record and swaps `FusedBatchNormalization` back in, so training a loaded
network updates its statistics as the run that wrote it did. A file without the record (saved by
plain `model.save`, or by dgad_tf before this scheme) loads unchanged; one naming
`FusedBatchNormalization` itself still loads here, where the class is registered.

Both swaps rebuild the model from its config and copy the weights (`get_weights` order, which
the swap does not change). The rebuild keeps Python's `random` state: Keras seeds every
initialiser it constructs from it, and a checkpoint written after an epoch must not change what
the next epoch draws, or a resumed run would no longer repeat the uninterrupted one.
"""

from __future__ import annotations

import copy
import json
import os
import pathlib
import random
import zipfile

import keras

from dgad_tf.models._common import FusedBatchNormalization

RECORD = "dgad_tf.json"
"""Archive member listing the layers `load_model` restores as `FusedBatchNormalization`."""

# How a layer's class is named in a Keras config (`serialize_keras_object`).
_KERAS_BATCH_NORM = {
    "module": "keras.layers",
    "class_name": "BatchNormalization",
    "registered_name": None,
}
_FUSED_BATCH_NORM = {
    "module": FusedBatchNormalization.__module__,
    "class_name": FusedBatchNormalization.__name__,
    "registered_name": keras.saving.get_registered_name(FusedBatchNormalization),
}


def save_model(model: keras.Model, path: str | os.PathLike) -> None:
    """Write `model` to a `.keras` file that plain `keras.saving.load_model` loads.

    Its `FusedBatchNormalization` layers are written as Keras's `BatchNormalization` (same
    weights and config) and listed in the archive member `dgad_tf.json`, from which `load_model`
    restores them. `model` itself is not changed. Every `.keras` file dgad_tf writes goes
    through here (atomically via `dgad_tf.rundir.save_model_atomic`).

    Args:
        model: a functional or sequential Keras model (nested models included).
        path: the file to write; must end in `.keras`.

    Raises:
        ValueError: `path` does not end in `.keras`, or `model` holds a `FusedBatchNormalization`
            its config does not list (a subclassed model), which plain Keras could not rebuild.
    """
    path = pathlib.Path(path)
    if path.suffix != ".keras":
        raise ValueError(f"`path` must end with '.keras'; received path={str(path)!r}")
    portable, fused = _with_keras_batch_norm(model)
    portable.save(path)
    if fused:
        record = {
            "format": 1,
            "about": (
                "Written by dgad_tf. The layers below are Keras BatchNormalization in config.json "
                "so that plain Keras loads this file; dgad_tf.models.load_model restores them as "
                "dgad_tf's FusedBatchNormalization (moving variance updated as PyTorch does)."
            ),
            "fused_batch_norm": fused,
        }
        with zipfile.ZipFile(path, "a") as archive:
            archive.writestr(RECORD, json.dumps(record, indent=2))


def load_model(path: str | os.PathLike) -> keras.Model:
    """Load a `.keras` network in safe mode, uncompiled, with its training-time layers.

    Every command loads through here. The layers `save_model` wrote as Keras's
    `BatchNormalization` come back as `FusedBatchNormalization` (see the module docstring);
    files naming `FusedBatchNormalization` itself load too, the class being registered.

    Args:
        path: a `.keras` file.

    Raises:
        ValueError: the file's `dgad_tf.json` is unreadable or names layers that are not a
            Keras `BatchNormalization` in the file's model.
    """
    model = keras.saving.load_model(path, safe_mode=True, compile=False)
    fused = _recorded_fused(path)
    if not fused:
        return model
    config = copy.deepcopy(model.get_config())
    missing = set(fused)
    for name, entry in _layer_entries(config):
        if name in missing and _is_class(entry, _KERAS_BATCH_NORM):
            entry.update(_FUSED_BATCH_NORM)
            missing.discard(name)
    if missing:
        raise ValueError(
            f"{path}: {RECORD} names layers that are not a Keras BatchNormalization in the "
            f"file's model: {', '.join(sorted(missing))}"
        )
    return _rebuilt(model, config)


def _with_keras_batch_norm(model):
    """(model to save, names of the layers written as Keras BatchNormalization)."""
    count = len({id(layer) for layer in _all_layers(model) if _is_fused(layer)})
    if not count:
        return model, []
    config = copy.deepcopy(model.get_config())
    fused = []
    for name, entry in _layer_entries(config):
        if _is_class(entry, _FUSED_BATCH_NORM):
            entry.update(_KERAS_BATCH_NORM)
            fused.append(name)
    if len(fused) != count:
        raise ValueError(
            f"model {model.name!r} holds {count} FusedBatchNormalization layers and its config "
            f"lists {len(fused)}: it cannot be written so that plain Keras loads it (only "
            f"functional and sequential models, nested ones included, can)"
        )
    return _rebuilt(model, config), fused


def _is_fused(layer):
    return isinstance(layer, FusedBatchNormalization)


def _all_layers(model):
    for layer in getattr(model, "layers", []):
        yield layer
        if isinstance(layer, keras.Model):
            yield from _all_layers(layer)


def _layer_entries(config, prefix=""):
    """(path, entry) for every layer entry of a model config; nested names join with '/'.

    Keras forbids '/' in layer names, so a path names one layer.
    """
    for entry in config.get("layers", []):
        inner = entry.get("config")
        if not isinstance(inner, dict):
            continue
        name = prefix + str(inner.get("name", ""))
        yield name, entry
        if isinstance(inner.get("layers"), list):
            yield from _layer_entries(inner, name + "/")


def _is_class(entry, naming):
    return all(entry.get(key) == value for key, value in naming.items())


def _recorded_fused(path):
    try:
        with zipfile.ZipFile(path) as archive:
            if RECORD not in archive.namelist():
                return []
            record = json.loads(archive.read(RECORD))
        fused = record["fused_batch_norm"]
        if not (isinstance(fused, list) and all(isinstance(name, str) for name in fused)):
            raise TypeError("fused_batch_norm is not a list of layer names")
    except (zipfile.BadZipFile, OSError, ValueError, KeyError, TypeError) as err:
        raise ValueError(f"{path}: unreadable {RECORD}: {err}") from None
    return fused


def _rebuilt(model, config):
    """`model`'s class built from `config`, with `model`'s weights; Python's `random` untouched."""
    state = random.getstate()
    try:
        rebuilt = model.__class__.from_config(config)
    finally:
        random.setstate(state)
    rebuilt.set_weights(model.get_weights())
    return rebuilt
