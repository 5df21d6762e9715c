"""Tests for dgad_tf.serving.export_student and dgad_tf.export: versions, atomic writes, the model
card, argument checks and the command line.

Most tests check one property of the session's one export (conftest's `exported`) or of a small
extra export against the Keras model, NumPy and hashlib. The attack is the stand-in PGD of
serving_helpers, so these tests do not depend on dgad_tf.attacks.
"""

import contextlib
import dataclasses
import errno
import hashlib
import json
import os
import pathlib

import keras
import numpy as np
import pytest
import serving_helpers
import tensorflow as tf
from serving_helpers import N_EVAL, keras_probabilities

from dgad_tf import export as export_cli
from dgad_tf import rundir, serving


@pytest.fixture(scope="module", autouse=True)
def stand_in_attacks():
    with serving_helpers.stand_in_attacks():
        yield


def _tree_hashes(folder):
    return {
        str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(pathlib.Path(folder).rglob("*"))
        if p.is_file()
    }


# --- layout and versions ---------------------------------------------------------------------


def test_export_writes_version_1_with_every_artifact(exported):
    base, _ = exported
    assert sorted(p.name for p in base.iterdir()) == ["1"]
    files = {p.name for p in (base / "1").iterdir()}
    assert {"saved_model.pb", "variables", "model_card.json"} <= files
    assert {"model_float32.tflite", "model_dynamic_range.tflite", "model_int8.tflite"} <= files
    assert "model_float16.tflite" not in files  # not a default format


def test_version_folder_is_readable_by_other_users(exported):
    # A TF Serving container usually runs as another user than the one who exported.
    assert (exported[0] / "1").stat().st_mode & 0o055 == 0o055


def test_next_export_takes_the_next_version(student, tmp_path):
    base = tmp_path / "m"
    first = serving.export_student(student, base, formats="tflite_float")
    second = serving.export_student(student, base, formats="tflite_float")
    assert (first["version"], second["version"]) == (1, 2)
    assert sorted(p.name for p in base.iterdir()) == ["1", "2"]


def test_next_version_ignores_non_numeric_folders(tmp_path):
    for name in ("3", "10", ".tmp-11-abc", "latest"):
        (tmp_path / name).mkdir()
    assert serving.next_version(tmp_path) == 11


def test_existing_version_is_rejected(student, exported):
    with pytest.raises(ValueError, match="version"):
        serving.export_student(student, exported[0], version=1, formats="tflite_float")


def test_run_directory_prefers_best_robust_checkpoint(student, tmp_path):
    student.save(tmp_path / "student_last.keras")
    assert rundir.resolve_model_path(tmp_path).name == "student_last.keras"
    student.save(tmp_path / "student_best_robust.keras")
    assert rundir.resolve_model_path(tmp_path).name == "student_best_robust.keras"


@pytest.mark.parametrize("kind", ["missing", "folder", "text", "truncated"])
def test_a_model_that_is_not_a_keras_archive_is_named_for_what_it_is(student, tmp_path, kind):
    path = tmp_path / "student.keras"
    serving_helpers.write_broken_model(path, kind, student)
    expected = {
        "missing": "no model at",
        "folder": "holds none of",
        "text": "not a .keras archive",
        "truncated": "not a .keras archive",
    }[kind]
    with pytest.raises((ValueError, FileNotFoundError), match=expected):
        rundir.resolve_model_path(path)


# --- atomic writes ---------------------------------------------------------------------------


@contextlib.contextmanager
def _parity_rule(name, rule):
    """The export format `name` checked with `rule` while the context is open."""
    original = serving.EXPORT_FORMATS.get(name)
    serving.EXPORT_FORMATS.register(name, dataclasses.replace(original, parity=rule), replace=True)
    try:
        yield
    finally:
        serving.EXPORT_FORMATS.register(name, original, replace=True)


@pytest.mark.parametrize(
    "key, rule",
    [
        ("saved_model", serving.ProbabilityTolerance(-1.0)),
        ("tflite_float", serving.ProbabilityTolerance(-1.0)),
        ("tflite_int8", serving.Top1Agreement(1.01)),
    ],
)
def test_failed_check_leaves_no_version_and_keeps_earlier_ones(
    student, digits, tmp_path, key, rule
):
    base = tmp_path / "m"
    serving.export_student(student, base, formats="tflite_float")
    before = _tree_hashes(base)
    with _parity_rule(key, rule), pytest.raises(serving.ExportVerificationError, match=key):
        serving.export_student(student, base, formats=key, representative_x=digits["train_x"])
    assert [p.name for p in base.iterdir()] == ["1"]
    assert _tree_hashes(base) == before


def test_corrupted_tflite_artifact_fails_verification(student, tmp_path, monkeypatch):
    real_convert = serving.convert_tflite

    def convert_a_different_model(model, *args, **kwargs):
        other = keras.models.clone_model(model)  # same architecture, fresh weights
        return real_convert(other, *args, **kwargs)

    monkeypatch.setattr(serving.tflite, "convert_tflite", convert_a_different_model)
    with pytest.raises(serving.ExportVerificationError, match="tflite_float"):
        serving.export_student(student, tmp_path / "m", formats="tflite_float")
    assert list((tmp_path / "m").iterdir()) == []


def _mount_point(path):
    path = pathlib.Path(path).absolute()
    while not os.path.ismount(path):
        path = path.parent
    return path


@pytest.mark.parametrize(
    "disk_full",
    [
        lambda path: OSError(errno.ENOSPC, "No space left on device", str(path)),
        # what TensorFlow's SaveV2 raised on a full 400 kB tmpfs
        lambda path: tf.errors.ResourceExhaustedError(
            None, None, f"{{{{function_node SaveV2}}}} {path}; No space left on device [Op:SaveV2]"
        ),
    ],
    ids=["OSError", "tf_ResourceExhaustedError"],
)
def test_a_full_disk_is_one_line_naming_the_disk_and_the_space_and_changes_nothing(
    run_dir, student, tmp_path, monkeypatch, capsys, disk_full
):
    base = tmp_path / "m"
    serving.export_student(student, base, formats="tflite_float")
    before = _tree_hashes(base)

    def half_written_then_full(model, folder, image_shape):
        (pathlib.Path(folder) / "variables").mkdir()
        partial = pathlib.Path(folder) / "variables" / "variables.data-00000-of-00001"
        partial.write_bytes(b"half")
        raise disk_full(partial)

    monkeypatch.setattr(serving.savedmodel, "save_serving_model", half_written_then_full)
    model = str(run_dir / "student_last.keras")
    command = ["--model", model, "--out", str(base), "--formats", "saved_model", "--eval-n", "0"]
    assert export_cli.main(command) == 2
    stderr = capsys.readouterr().err
    errors = [line for line in stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "Traceback" not in stderr
    # Two float32 copies of the weights for a SavedModel, plus 1 MiB for graphs and the card.
    needed = (sum(int(np.prod(w.shape)) for w in student.weights) * 4 * 2 + 2**20) / 2**20
    assert f"no space left on the disk mounted at {_mount_point(tmp_path)} " in errors[0]
    assert f"needs about {needed:.3g} MB there and " in errors[0]
    assert "MB are free" in errors[0] and "another --out" in errors[0]
    assert [p.name for p in base.iterdir()] == ["1"] and _tree_hashes(base) == before
    with pytest.raises(serving.ExportDiskFull) as raised:
        serving.export_student(student, base, formats="saved_model")
    assert raised.value.errno == errno.ENOSPC
    assert [p.name for p in base.iterdir()] == ["1"] and _tree_hashes(base) == before


# --- model card ------------------------------------------------------------------------------


def test_model_card_file_matches_returned_card(exported):
    base, card = exported
    assert json.loads((base / "1" / "model_card.json").read_text()) == card


def test_model_card_hashes_match_files(exported, run_dir):
    source = exported[1]["source"]
    digest = hashlib.sha256((run_dir / "student_last.keras").read_bytes()).hexdigest()
    assert source["model_sha256"] == digest
    config_digest = hashlib.sha256((run_dir / "config.yaml").read_bytes()).hexdigest()
    assert source["config_sha256"] == config_digest
    assert source["run"] == str(run_dir)


def test_model_card_clean_accuracy_matches_keras(exported, student, digits):
    evaluation = exported[1]["evaluation"]
    x, y = digits["test_x"][:N_EVAL], digits["test_y"][:N_EVAL]
    expected = np.mean(keras_probabilities(student, x).argmax(axis=1) == y)
    assert evaluation["n"] == N_EVAL
    assert evaluation["clean_accuracy"]["keras"] == pytest.approx(expected)
    assert evaluation["clean_accuracy"]["saved_model"] == pytest.approx(expected)
    assert set(evaluation["clean_accuracy"]) == {"keras", *serving.FORMATS}


def test_model_card_robust_and_transfer_accuracies(exported):
    evaluation = exported[1]["evaluation"]
    robust, transfer = evaluation["robust_accuracy_pgd20"], evaluation["transfer_accuracy_pgd20"]
    assert robust["keras"] < evaluation["clean_accuracy"]["keras"]
    assert robust["saved_model"] == pytest.approx(robust["keras"])
    assert set(transfer) == {"tflite_float", "tflite_dynamic", "tflite_int8"}
    assert transfer["tflite_float"] == pytest.approx(robust["keras"])
    assert evaluation["autoattack"] is None


def test_zero_eps_robust_accuracy_equals_clean(student, digits, tmp_path):
    card = serving.export_student(
        student,
        tmp_path / "m",
        formats="tflite_float",
        eval_arrays=(digits["test_x"][:64], digits["test_y"][:64]),
        eps=0.0,
    )
    evaluation = card["evaluation"]
    assert evaluation["robust_accuracy_pgd20"]["keras"] == evaluation["clean_accuracy"]["keras"]
    assert (
        evaluation["transfer_accuracy_pgd20"]["tflite_float"]
        == evaluation["clean_accuracy"]["tflite_float"]
    )


def test_autoattack_result_is_recorded_when_requested(student, digits, tmp_path, monkeypatch):
    calls = []

    def evaluate_robustness(model, x, y, *, attacks, eps, batch_size, seed):
        calls.append((x.shape[0], eps, tuple(attacks)))
        return {"attacks": {"autoattack": {"robust_accuracy": 0.25}}}

    monkeypatch.setattr(serving.verify, "evaluate_robustness", evaluate_robustness)
    card = serving.export_student(
        student,
        tmp_path / "m",
        formats="tflite_float",
        eval_arrays=(digits["test_x"][:16], digits["test_y"][:16]),
        eps=4 / 255,
        autoattack=True,
    )
    assert calls == [(16, 4 / 255, ("autoattack",))]
    assert card["evaluation"]["autoattack"]["robust_accuracy"] == 0.25


def test_model_card_parity_figures_within_tolerance(exported):
    parity = exported[1]["parity"]
    assert parity["saved_model"]["max_abs_diff_probabilities"] <= 1e-5
    assert parity["tflite_float"]["max_abs_diff_probabilities"] <= 1e-4
    assert parity["tflite_int8"]["top1_agreement"] >= 0.98
    assert parity["tflite_dynamic"]["top1_agreement"] >= 0.98
    assert parity["n"] == N_EVAL


# --- argument checks -------------------------------------------------------------------------


def test_int8_without_representative_data_is_rejected(student, tmp_path):
    with pytest.raises(ValueError, match="representative_x"):
        serving.export_student(student, tmp_path / "m", formats="tflite_int8")


def test_eps_outside_unit_interval_is_rejected(student, tmp_path):
    with pytest.raises(ValueError, match="eps=8"):
        serving.export_student(student, tmp_path / "m", formats="tflite_float", eps=8)


def test_unknown_format_is_rejected(student, tmp_path):
    with pytest.raises(ValueError, match="formats"):
        serving.export_student(student, tmp_path / "m", formats="onnx")


# --- command line ----------------------------------------------------------------------------


def test_export_cli_writes_a_verified_version(run_dir, digits, tmp_path, capsys):
    np.savez(tmp_path / "train.npz", x=digits["train_x"][:300])
    np.savez(tmp_path / "test.npz", x=digits["test_x"], y=digits["test_y"])
    code = export_cli.main(
        [
            "--model", str(run_dir / "student_last.keras"), "--out", str(tmp_path / "m"),
            "--formats", "tflite_float,tflite_int8", "--eval-n", "50", "--eps", "4/255",
            "--representative-data", str(tmp_path / "train.npz"),
            "--eval-data", str(tmp_path / "test.npz"),
        ]
    )  # fmt: skip
    assert code == 0
    card = json.loads((tmp_path / "m" / "1" / "model_card.json").read_text())
    assert card["evaluation"]["n"] == 50
    assert card["evaluation"]["eps"] == pytest.approx(4 / 255)
    assert "tflite_int8" in capsys.readouterr().out


def test_parse_eps_accepts_fractions():
    assert export_cli.parse_eps("8/255") == pytest.approx(8 / 255)
    assert export_cli.parse_eps("0.5") == 0.5


# --- verification thresholds and per-artifact figures -------------------------------------


def _shifted_copy(model, delta):
    """`model` with `delta` added to the final layer's bias of class 0: same network, slightly
    different probabilities (at most delta/4 apart)."""
    other = keras.models.clone_model(model)
    other.set_weights(model.get_weights())
    bias = other.layers[-1].bias
    bias.assign(bias.numpy() + np.eye(bias.shape[0], dtype=np.float32)[0] * delta)
    return other


@pytest.mark.parametrize("artifact", ["saved_model", "tflite_float"])
def test_an_artifact_a_thousandth_off_in_probability_is_refused(
    student, digits, tmp_path, monkeypatch, artifact
):
    # An exported network whose probabilities move by ~1e-3 is not the model that was trained;
    # a check loose enough to let that through would pass almost any near-copy.
    shifted = _shifted_copy(student, 0.01)
    x = digits["test_x"][:256]
    gap = np.abs(keras_probabilities(shifted, x) - keras_probabilities(student, x)).max()
    assert 5e-4 < gap < 5e-3, gap
    if artifact == "saved_model":
        real_save = serving.savedmodel.save_serving_model
        monkeypatch.setattr(
            serving.savedmodel,
            "save_serving_model",
            lambda model, *args, **kwargs: real_save(shifted, *args, **kwargs),
        )
    else:
        real_convert = serving.tflite.convert_tflite
        monkeypatch.setattr(
            serving.tflite,
            "convert_tflite",
            lambda model, *args, **kwargs: real_convert(shifted, *args, **kwargs),
        )
    with pytest.raises(serving.ExportVerificationError, match=artifact):
        serving.export_student(student, tmp_path / "m", formats=artifact, representative_x=x)


def _near_the_boundary(model, x, count):
    """uint8 images on segments between test images of different classes where the float
    model's top two logits are within a few hundredths: where int8 rounding flips classes."""
    rng = np.random.default_rng(0)
    found = []
    for _ in range(50 * count):  # bounded: a model without such segments fails, not hangs
        if len(found) >= count:
            break
        a, b = x[rng.integers(0, len(x), 2)]
        t = np.linspace(0.0, 1.0, 64)[:, None, None, None]
        images = np.round((1 - t) * a + t * b).astype(np.uint8)
        logits = model(images / np.float32(255.0), training=False).numpy()
        top2 = np.sort(logits, axis=1)[:, -2:]
        found.extend(images[(top2[:, 1] - top2[:, 0]) < 0.05])
    assert len(found) >= count, f"only {len(found)} images near the boundary"
    return np.stack(found[:count])


def test_each_artifact_is_scored_by_its_own_predictions(student, digits, tmp_path):
    # Images near the float model's boundaries, labelled with its own predictions: the float
    # model scores 1 there by construction, the int8 model does not. Each card figure must be
    # that artifact's accuracy, recomputed here from the written file.
    boundary = _near_the_boundary(student, digits["test_x"], 300)
    labels = keras_probabilities(student, boundary).argmax(axis=1)
    eval_x = np.concatenate([digits["test_x"][:200], boundary])
    eval_y = np.concatenate([digits["test_y"][:200], labels])
    base = tmp_path / "m"
    card = serving.export_student(
        student,
        base,
        formats="tflite_float,tflite_int8",
        representative_x=digits["train_x"],
        eval_arrays=(eval_x, eval_y),
        parity_n=200,
        eps=2 / 255,
    )
    clean = card["evaluation"]["clean_accuracy"]
    for name in ("tflite_float", "tflite_int8"):
        path = base / "1" / serving.EXPORT_FORMATS.get(name).path
        runner = serving.tflite.TFLiteRunner(path)
        own = np.mean(runner.logits(eval_x / np.float32(255.0)).argmax(axis=1) == eval_y)
        assert clean[name] == pytest.approx(own), name
    assert clean["tflite_int8"] < clean["keras"] - 0.01, "int8 flipped nothing: uninformative"
