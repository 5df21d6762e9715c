"""dgad_tf.model_files: a `.keras` file checked before Keras loads it, hashed; files made by hand.

Keras reports a folder, a text file and a truncated archive alike as "File not found"; each
kind of wrong file is made here and its message checked. No training.
"""

import hashlib
import zipfile

import pytest

from dgad_tf.model_files import (
    check_keras_file,
    is_saved_model_dir,
    save_model_atomic,
    sha256_file,
)


def archive(path, members):
    with zipfile.ZipFile(path, "w") as handle:
        for name, data in members.items():
            handle.writestr(name, data)
    return path


def refusal(path):
    with pytest.raises(ValueError) as error:
        check_keras_file(path, "model.teacher_path")
    return str(error.value)


def test_a_whole_keras_archive_passes_and_is_returned_as_a_path(tmp_path):
    path = archive(tmp_path / "m.keras", {"config.json": "{}", "model.weights.h5": "w"})
    assert check_keras_file(str(path), "`model`") == path


def test_each_kind_of_wrong_model_file_is_named(tmp_path):
    what = "model.teacher_path"
    assert refusal(tmp_path / "none.keras") == f"{what}: no model at {tmp_path / 'none.keras'}"
    folder = tmp_path / "run.keras"
    folder.mkdir()
    assert refusal(folder) == f"{what}: {folder} is a folder, not a .keras model file"
    h5 = archive(tmp_path / "m.h5", {"config.json": "{}"})
    assert refusal(h5) == f"{what}: {h5} is not a .keras model file"
    text = tmp_path / "text.keras"
    text.write_text("not an archive")
    assert refusal(text) == (
        f"{what}: {text} is not a .keras archive (truncated, or another kind of file)"
    )
    weights_only = archive(tmp_path / "w.keras", {"model.weights.h5": "w"})
    assert (
        refusal(weights_only)
        == f"{what}: {weights_only} is a damaged .keras archive (no config.json)"
    )


def test_a_corrupt_member_is_named(tmp_path):
    path = archive(tmp_path / "m.keras", {"config.json": "{}", "model.weights.h5": "weights" * 9})
    data = bytearray(path.read_bytes())
    at = data.index(b"weights" * 9)  # stored uncompressed: flip a byte of the member
    data[at] ^= 0xFF
    path.write_bytes(bytes(data))
    assert refusal(path) == (
        f"model.teacher_path: {path} is a damaged .keras archive (corrupt member model.weights.h5)"
    )


def test_an_archive_whose_member_table_is_broken_is_named(tmp_path):
    path = archive(tmp_path / "m.keras", {"config.json": "{}"})
    data = bytearray(path.read_bytes())
    at = data.index(b"PK\x01\x02")  # the central directory's entry: its signature is damaged
    data[at + 2] = 0
    path.write_bytes(bytes(data))
    assert zipfile.is_zipfile(path)  # the end record is whole, so the file looks like a zip
    message = refusal(path)
    assert message.startswith(f"model.teacher_path: {path} is a damaged .keras archive: ")
    assert "File is not a zip file" in message or "Bad magic number" in message


def test_a_saved_model_folder_holds_saved_model_pb(tmp_path):
    assert not is_saved_model_dir(tmp_path / "missing")
    assert not is_saved_model_dir(str(tmp_path))
    (tmp_path / "saved_model.pb").mkdir()
    assert not is_saved_model_dir(tmp_path)  # a folder of that name is no SavedModel
    (tmp_path / "saved_model.pb").rmdir()
    (tmp_path / "saved_model.pb").write_bytes(b"graph")
    assert is_saved_model_dir(str(tmp_path))
    assert not is_saved_model_dir(tmp_path / "saved_model.pb")


@pytest.mark.parametrize("size", [0, 5, (1 << 20) + 3])  # empty, one block, past one block
def test_sha256_file_is_the_digest_of_the_files_bytes(tmp_path, size):
    data = bytes(i % 251 for i in range(size))
    (tmp_path / "f").write_bytes(data)
    assert sha256_file(tmp_path / "f") == hashlib.sha256(data).hexdigest()


def test_a_model_is_saved_whole_where_asked_and_nothing_else_is_left(tmp_path):
    import keras
    import numpy as np

    model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(3, name="dense")])
    path = tmp_path / "run" / "sub" / "teacher.keras"
    save_model_atomic(model, str(path))
    assert sorted(p.name for p in path.parent.iterdir()) == ["teacher.keras"]
    check_keras_file(path, "model.teacher_path")
    loaded = keras.saving.load_model(path)
    x = np.arange(8, dtype="float32").reshape(2, 4)
    np.testing.assert_array_equal(np.asarray(loaded(x)), np.asarray(model(x)))
