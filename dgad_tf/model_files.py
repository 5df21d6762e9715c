"""A model file: a whole `.keras` archive checked before loading, written atomically, hashed.

Keras reports a folder, a text file and a truncated archive alike as "File not found";
`check_keras_file` names the actual problem first. Every `.keras` file dgad_tf writes goes
through `save_model_atomic`, so no reader ever sees half of one. Which checkpoint a run folder
offers is `dgad_tf.rundir`'s (`resolve_model_path`), which re-exports these names.

Example:
    >>> save_model_atomic(model, "runs/x/teacher.keras")
    >>> check_keras_file("runs/x/teacher.keras", "model.teacher_path")
"""

from __future__ import annotations

import hashlib
import os
import pathlib
import zipfile
from typing import TYPE_CHECKING

from dgad_tf.workspace import atomic_write

if TYPE_CHECKING:
    import keras


def check_keras_file(path: str | os.PathLike, what: str) -> pathlib.Path:
    """`path` is a whole `.keras` archive, else a ValueError saying what it is instead.

    Keras reports a folder, a text file or a truncated archive alike as "File not found"; this
    names the actual problem before loading.
    """
    path = pathlib.Path(path)
    if not path.exists():
        raise ValueError(f"{what}: no model at {path}")
    if path.is_dir():
        raise ValueError(f"{what}: {path} is a folder, not a .keras model file")
    if path.suffix != ".keras":
        raise ValueError(f"{what}: {path} is not a .keras model file")
    if not zipfile.is_zipfile(path):
        raise ValueError(
            f"{what}: {path} is not a .keras archive (truncated, or another kind of file)"
        )
    try:
        with zipfile.ZipFile(path) as archive:
            names = set(archive.namelist())
            broken = archive.testzip()
    except (zipfile.BadZipFile, OSError) as err:
        raise ValueError(f"{what}: {path} is a damaged .keras archive: {err}") from None
    if broken is not None or "config.json" not in names:
        raise ValueError(
            f"{what}: {path} is a damaged .keras archive "
            f"({'corrupt member ' + broken if broken else 'no config.json'})"
        )
    return path


def save_model_atomic(model: keras.Model, path: str | os.PathLike) -> None:
    """`dgad_tf.models.save_model(model, path)` without ever leaving a partial file under `path`.

    Every `.keras` file dgad_tf writes (run checkpoints, `teacher.keras`, converted teachers) is
    written here, so every one loads in plain Keras (see `dgad_tf.models.saving`).
    """
    from dgad_tf.models import save_model

    atomic_write(path, lambda tmp: save_model(model, tmp))


def is_saved_model_dir(path) -> bool:
    """Whether `path` is a SavedModel directory (holds `saved_model.pb`)."""
    path = pathlib.Path(path)
    return path.is_dir() and (path / "saved_model.pb").is_file()


def sha256_file(path):
    """Hex SHA-256 of a file's bytes.

    Args:
        path: file to hash.
    """
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()
