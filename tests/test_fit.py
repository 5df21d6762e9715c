"""`python -m dgad_tf.fit` end to end on tiny data: the run directory, resume, refusals."""

import json
import os
import pathlib
import shutil
import signal
import subprocess
import sys
import time

import keras
import numpy as np
import pytest
import yaml
from subprocesses import run_command

from dgad_tf.fit import main

REPO = pathlib.Path(__file__).resolve().parents[1]

TINY = [
    "data.source=digits",
    "data.train_limit=192",
    "data.flip=false",
    "model.student=small-cnn",
    "model.teacher=small-cnn",
    "attack.eps=0.1",
    "attack.step_size=0.05",
    "attack.steps=2",
    "optimizer.lr=0.05",
    "optimizer.milestones=[]",
    "train.batch_size=48",
    "train.val_robust_n=48",
    "train.val_robust_steps=2",
    "eval.n=48",
    "eval.attacks=[clean,fgsm,pgd5]",
    "output.tensorboard=true",
]


def args(run_dir, *extra):
    out = []
    for item in TINY + [f"output.dir={run_dir}"] + list(extra):
        out += ["--set", item]
    return out + ["--quiet"]


@pytest.fixture(scope="module")
def dgad_run(tmp_path_factory):
    """A DGAD run folder whose teacher was trained in it (so it holds `teacher.keras` too)."""
    run_dir = tmp_path_factory.mktemp("dgad") / "run"
    # Four teacher epochs: a teacher must beat chance on the data before it is distilled from.
    code = main(args(run_dir, "method.name=dgad", "train.epochs=2", "teacher_train.epochs=4"))
    assert code == 0
    return run_dir


def test_dgad_run_writes_a_complete_run_directory(dgad_run):
    run_dir = dgad_run
    for name in (
        "config.yaml",
        "student_last.keras",
        "student_best_robust.keras",
        "student_best_clean.keras",
        "train_state.npz",
        "log.csv",
        "report.json",
        "teacher.keras",
    ):
        assert (run_dir / name).is_file(), name
    assert (run_dir / "tensorboard").is_dir()
    assert not list(run_dir.glob(".*")), "temporary files left behind"
    report = json.loads((run_dir / "report.json").read_text())
    assert report["command"].startswith("python -m dgad_tf.fit")
    assert set(report["student"]["attacks"]) == {"clean", "fgsm", "pgd5"}
    assert report["teacher"]["n"] == 48
    assert [row["epoch"] for row in report["history"]] == [1, 2]
    assert "val_robust_accuracy" in report["history"][-1]
    # The teacher on disk is the one distilled from: loading it gives the file's weights.
    teacher = keras.models.load_model(run_dir / "teacher.keras", safe_mode=True)
    assert teacher.output_shape[-1] == 10


def test_every_keras_file_of_a_run_loads_in_plain_keras_in_a_process_without_dgad_tf(
    dgad_run, tmp_path
):
    # Students and teachers are handed to code that never imports dgad_tf; dgad_tf itself
    # still loads them with the fused batch norm they were trained with.
    from plain_keras import assert_plain_keras_gives_dgad_tf_logits

    files = sorted(dgad_run.rglob("*.keras"))
    names = {path.name for path in files}
    assert {"teacher.keras", "student_last.keras", "student_best_robust.keras"} <= names
    assert any(path.parent.name == "teacher_run" for path in files)
    assert_plain_keras_gives_dgad_tf_logits(files, tmp_path)


def test_the_teacher_trained_in_a_run_writes_its_own_config_in_teacher_run(dgad_run):
    # The run distils with dgad for 2 epochs at lr 0.05; its teacher trains with pgd_at for 4
    # epochs at teacher_train's default lr 0.1: teacher_run/ holds the teacher's run, not the
    # student's config.
    from dgad_tf import rundir
    from dgad_tf.config import config_from_dict, load_config

    run_cfg = load_config(dgad_run / "config.yaml")
    teacher_run = dgad_run / "teacher_run"
    teacher_cfg = load_config(teacher_run / "config.yaml")
    assert (run_cfg.method.name, run_cfg.train.epochs, run_cfg.optimizer.lr) == ("dgad", 2, 0.05)
    assert (teacher_cfg.method.name, teacher_cfg.train.epochs) == ("pgd_at", 4)
    assert (teacher_cfg.optimizer.lr, teacher_cfg.optimizer.milestones) == (0.1, ())
    assert teacher_cfg.model.student == "small-cnn" and teacher_cfg.teacher_train.epochs == 0
    assert teacher_cfg.hash() == rundir.teacher_run_config(run_cfg, dgad_run).hash()
    # Its training state records the same config, and it trained the teacher's epochs.
    meta = rundir.read_state_meta(teacher_run)
    assert config_from_dict(yaml.safe_load(meta["config"])).hash() == teacher_cfg.hash()
    assert meta["epoch"] == 4 and len(rundir.read_log(teacher_run / "log.csv")) == 4


def test_a_teacher_run_written_before_it_had_its_own_config_resumes(dgad_run, tmp_path):
    # An earlier version left teacher_run/ without config.yaml, its state recording the config
    # of the run around it. A run killed before its teacher.keras was written resumes there.
    from dgad_tf import rundir
    from dgad_tf.config import load_config

    run_dir = tmp_path / "run"
    shutil.copytree(dgad_run, run_dir)
    run_yaml = load_config(dgad_run / "config.yaml", [f"output.dir={run_dir}"]).to_yaml()
    (run_dir / "config.yaml").write_text(run_yaml)
    teacher_run = run_dir / "teacher_run"
    (teacher_run / "config.yaml").unlink()
    (run_dir / "teacher.keras").unlink()
    state = teacher_run / rundir.STATE_FILE
    with np.load(state) as loaded:
        arrays = dict(loaded)
    meta = json.loads(str(arrays["meta"]))
    arrays["meta"] = np.array(json.dumps({**meta, "config": run_yaml}))
    np.savez(state, **arrays)

    code = main(args(run_dir, "method.name=dgad", "train.epochs=2", "teacher_train.epochs=4"))
    assert code == 0
    teacher_cfg = rundir.teacher_run_config(load_config(run_dir / "config.yaml"), run_dir)
    assert load_config(teacher_run / "config.yaml").hash() == teacher_cfg.hash()
    assert len(rundir.read_log(teacher_run / "log.csv")) == 4  # resumed, not retrained
    again = keras.saving.load_model(run_dir / "teacher.keras", compile=False)
    before = keras.saving.load_model(dgad_run / "teacher.keras", compile=False)
    for a, b in zip(again.get_weights(), before.get_weights(), strict=True):
        np.testing.assert_array_equal(a, b)


def _kill_after_first_epoch(fit_args, run_dir, extra_seconds=0.0):
    """Run `python -m dgad_tf.fit` in a subprocess, SIGKILL it once an epoch's state is written
    (plus `extra_seconds`), and return the epochs the state file says are done."""
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3")
    proc = subprocess.Popen(
        [sys.executable, "-m", "dgad_tf.fit", *fit_args],
        cwd=REPO,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    state = run_dir / "train_state.npz"
    deadline = time.time() + 240
    try:
        while not state.exists() and time.time() < deadline and proc.poll() is None:
            time.sleep(0.05)
        assert state.exists(), "no epoch completed in time"
        time.sleep(extra_seconds)
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    with np.load(state) as saved:
        return json.loads(str(saved["meta"]))["epoch"]


def test_resume_after_kill_continues_after_the_last_epoch(tmp_path):
    run_dir = tmp_path / "run"
    done = _kill_after_first_epoch(
        args(run_dir, "method.name=pgd_at", "train.epochs=4", "output.tensorboard=false"), run_dir
    )
    assert done >= 1
    if done == 4:
        pytest.skip("the run finished before it could be killed")
    # Same command again: resumes, and every epoch appears once in the log.
    assert (
        main(args(run_dir, "method.name=pgd_at", "train.epochs=4", "output.tensorboard=false")) == 0
    )
    epochs = [row.split(",")[0] for row in (run_dir / "log.csv").read_text().splitlines()[1:]]
    assert epochs == ["1", "2", "3", "4"], epochs


def _run_state(run_dir):
    with np.load(run_dir / "train_state.npz") as state:
        return {key: state[key] for key in state.files if key != "meta"}


def test_a_run_killed_mid_epoch_and_resumed_ends_bit_exact(tmp_path):
    # Same data order, augmentation, attack starts and optimiser steps after the resume as in
    # the uninterrupted run: the final weights and optimiser state are equal to the bit.
    extra = (
        "method.name=pgd_at",
        "train.epochs=3",
        "output.tensorboard=false",
        "data.train_limit=1200",
    )
    uninterrupted = tmp_path / "uninterrupted"
    assert main(args(uninterrupted, *extra)) == 0

    killed = tmp_path / "killed"
    # 0.3 s after the first epoch's state appears: into the second epoch (25 steps), not past it.
    done = _kill_after_first_epoch(args(killed, *extra), killed, extra_seconds=0.3)
    if done == 3:
        pytest.skip("the run finished before it could be killed")
    assert main(args(killed, *extra)) == 0
    expected, resumed = _run_state(uninterrupted), _run_state(killed)
    assert sorted(expected) == sorted(resumed)
    for key in expected:
        np.testing.assert_array_equal(resumed[key], expected[key], err_msg=key)


def test_tensorboard_and_log_csv_use_the_same_names_and_epoch_numbers(tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    run_dir = tmp_path / "run"
    assert main(args(run_dir, "method.name=pgd_at", "train.epochs=2")) == 0
    header = (run_dir / "log.csv").read_text().splitlines()[0].split(",")
    events = EventAccumulator(str(run_dir / "tensorboard"), size_guidance={"tensors": 0})
    events.Reload()
    tags = set(events.Tags()["tensors"]) | set(events.Tags()["scalars"])
    assert "val_robust_accuracy" in tags and "loss" in tags
    assert tags == set(header) - {"epoch"}
    steps = sorted({event.step for event in events.Tensors("val_robust_accuracy")})
    assert steps == [1, 2]


def test_teacher_with_other_classes_is_refused_before_writing(tmp_path, capsys):
    teacher = keras.Sequential(
        [keras.Input((8, 8, 1)), keras.layers.Flatten(), keras.layers.Dense(5)]
    )
    teacher_path = tmp_path / "teacher5.keras"
    teacher.save(teacher_path)
    run_dir = tmp_path / "run"
    code = main(args(run_dir, "method.name=dgad", f"model.teacher_path={teacher_path}"))
    assert code == 2
    err = capsys.readouterr().err
    assert "model.teacher_path" in err and "5 classes" in err
    assert not run_dir.exists()


def _permuted_teacher(teacher_path, out_path):
    """The teacher with its logits rotated by one class: every prediction names the wrong class."""
    teacher = keras.models.load_model(teacher_path, safe_mode=True, compile=False)
    classes = teacher.output_shape[-1]
    rotate = keras.layers.Dense(classes, use_bias=False, name="rotate")
    model = keras.Model(teacher.inputs, rotate(teacher.outputs[0]))
    rotate.set_weights([np.roll(np.eye(classes, dtype="float32"), 1, axis=1)])
    model.save(out_path)
    return model


def test_teacher_with_permuted_classes_is_refused_before_writing(tmp_path, digits_teacher):
    permuted_path = tmp_path / "permuted.keras"
    permuted = _permuted_teacher(digits_teacher, permuted_path)
    x = np.random.default_rng(0).uniform(size=(4, 8, 8, 1)).astype("float32")
    original = keras.models.load_model(digits_teacher, compile=False)
    np.testing.assert_array_equal(np.argmax(permuted(x), -1), (np.argmax(original(x), -1) + 1) % 10)
    run_dir = tmp_path / "run"
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3")
    command = [sys.executable, "-m", "dgad_tf.fit"] + args(
        run_dir, "method.name=dgad", f"model.teacher_path={permuted_path}"
    )
    proc = run_command(command, cwd=REPO, env=env)
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert "model.teacher_path" in proc.stderr and "chance" in proc.stderr
    assert str(permuted_path) in proc.stderr
    assert not run_dir.exists()


def test_the_trained_teacher_itself_is_accepted(tmp_path, digits_teacher):
    from dgad_tf import build, config

    cfg = config.load_config(
        None, TINY + [f"model.teacher_path={digits_teacher}", f"output.dir={tmp_path / 'run'}"]
    )
    splits = build.load_data(cfg)
    assert build.load_teacher(digits_teacher, splits).output_shape[-1] == 10


@pytest.mark.parametrize("val_fraction, scored", [(0.1, "144 validation"), (0.0, "500 training")])
def test_a_constant_teacher_is_at_chance(val_fraction, scored):
    from dgad_tf import build
    from dgad_tf import data as data_lib

    splits = data_lib.load_splits("digits", val_fraction=val_fraction)
    constant = keras.Sequential(
        [
            keras.Input((8, 8, 1)),
            keras.layers.Flatten(),
            keras.layers.Dense(10, kernel_initializer="zeros", bias_initializer="zeros"),
        ]
    )
    # Always class 0: about 10% right, under 1/10 + 3 * sqrt(0.09 / n) (0.175 for n = 144).
    with pytest.raises(build.RunError, match="chance level") as err:
        build.check_teacher_beats_chance(constant, splits, "constant.keras")
    assert scored in str(err.value)


def test_missing_teacher_without_training_is_refused(tmp_path, capsys):
    run_dir = tmp_path / "run"
    assert main(args(run_dir, "method.name=adaad", "teacher_train.epochs=0")) == 2
    assert "teacher_path" in capsys.readouterr().err
    assert not run_dir.exists()


def test_wrong_data_path_is_refused(tmp_path, capsys):
    run_dir = tmp_path / "run"
    code = main(args(run_dir, "data.source=npz", f"data.path={tmp_path / 'nothing'}"))
    assert code == 2
    assert "nothing" in capsys.readouterr().err
    assert not run_dir.exists()


def test_a_run_directory_of_another_config_is_left_alone(tmp_path, capsys):
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    (run_dir / "config.yaml").write_text("train:\n  epochs: 7\n")
    (run_dir / "student_last.keras").write_bytes(b"precious")
    assert main(args(run_dir, "method.name=pgd_at")) == 2
    assert "different config" in capsys.readouterr().err
    assert (run_dir / "student_last.keras").read_bytes() == b"precious"


PGD_AT_ONE_EPOCH = ("method.name=pgd_at", "train.epochs=1", "output.tensorboard=false")


@pytest.fixture(scope="module")
def interrupted_run(tmp_path_factory):
    """A one-epoch run folder as a kill before its report leaves it (no report.json), and a copy.

    `output.dir` is part of the config, so each test restores the folder in place from the copy.
    """
    root = tmp_path_factory.mktemp("interrupted")
    run_dir = root / "run"
    assert main(args(run_dir, *PGD_AT_ONE_EPOCH)) == 0
    (run_dir / "report.json").unlink()
    shutil.copytree(run_dir, root / "copy")
    return run_dir


def _without_config(interrupted_run, tmp_path):
    run_dir = interrupted_run
    shutil.rmtree(run_dir)
    shutil.copytree(run_dir.parent / "copy", run_dir)
    config = (run_dir / "config.yaml").read_bytes()
    (run_dir / "config.yaml").unlink()
    return run_dir, config


def test_a_run_that_lost_its_config_resumes_and_gets_it_back(interrupted_run, tmp_path, caplog):
    run_dir, config = _without_config(interrupted_run, tmp_path)
    with caplog.at_level("WARNING"):
        assert main(args(run_dir, *PGD_AT_ONE_EPOCH)) == 0
    assert "config.yaml is missing" in caplog.text and "written back" in caplog.text
    assert (run_dir / "config.yaml").read_bytes() == config
    epochs = [row.split(",")[0] for row in (run_dir / "log.csv").read_text().splitlines()[1:]]
    assert epochs == ["1"]  # resumed after the recorded epoch, not trained again
    assert (run_dir / "report.json").exists()


def test_a_run_that_lost_its_config_is_not_resumed_under_another(interrupted_run, tmp_path, capsys):
    run_dir, _ = _without_config(interrupted_run, tmp_path)
    before = {p.name: p.read_bytes() for p in run_dir.iterdir()}
    assert main(args(run_dir, *PGD_AT_ONE_EPOCH, "optimizer.lr=0.01")) == 2
    err = capsys.readouterr().err
    assert "config.yaml is missing" in err and "`optimizer.lr` (0.05 there, 0.01 here)" in err
    assert {p.name: p.read_bytes() for p in run_dir.iterdir()} == before


def test_a_run_without_a_recorded_config_names_the_command_that_restores_it(
    interrupted_run, tmp_path, capsys
):
    run_dir, config = _without_config(interrupted_run, tmp_path)
    # A training state written before the config was recorded in it.
    with np.load(run_dir / "train_state.npz") as state:
        arrays = {key: state[key] for key in state.files}
    meta = json.loads(str(arrays["meta"]))
    del meta["config"]
    arrays["meta"] = np.array(json.dumps(meta))
    np.savez(run_dir / "train_state.npz", **arrays)
    assert main(args(run_dir, *PGD_AT_ONE_EPOCH)) == 2
    err = capsys.readouterr().err
    assert f"--print-config > {run_dir / 'config.yaml'}" in err
    assert not (run_dir / "config.yaml").exists()
    # The advice works: the printed config is the run's config, and the run then resumes.
    assert main(args(run_dir, *PGD_AT_ONE_EPOCH) + ["--print-config"]) == 0
    (run_dir / "config.yaml").write_text(capsys.readouterr().out)
    assert main(args(run_dir, *PGD_AT_ONE_EPOCH)) == 0
    epochs = [row.split(",")[0] for row in (run_dir / "log.csv").read_text().splitlines()[1:]]
    assert epochs == ["1"]


def test_export_section_exports_the_finished_student(tmp_path):
    run_dir = tmp_path / "run"
    code = main(
        args(
            run_dir,
            "method.name=pgd_at",
            "train.epochs=1",
            "export.formats=[saved_model,tflite_float]",
            "output.tensorboard=false",
        )
    )
    assert code == 0
    version = run_dir / "export" / "1"
    assert (version / "saved_model.pb").is_file()
    assert (version / "model_float32.tflite").is_file()
    card = json.loads((version / "model_card.json").read_text())
    report = json.loads((run_dir / "report.json").read_text())
    assert report["export"]["source"] == card["source"]
    assert card["source"]["config_sha256"] == report["config_sha256"]
    assert card["evaluation"]


def _clean_accuracy(path, n=48):
    from dgad_tf.data import load_splits
    from dgad_tf.robustness import evaluate_model

    splits = load_splits("digits")
    model = keras.models.load_model(path, safe_mode=True, compile=False)
    return evaluate_model(model, splits.test.x[:n], splits.test.y[:n], attacks=["clean"])[
        "clean_accuracy"
    ]


# train.select: (extra overrides, checkpoint the report must use, metric that chose it,
# steps per epoch: 100 training images, or 90 beside 10 validation ones, in batches of 48 with
# the last partial batch kept)
SELECTIONS = {
    "last": (["data.val_fraction=0"], "student_last.keras", None, 3),
    "best_val": ([], "student_best_robust.keras", "val_robust_accuracy", 2),
    "best_test": (
        ["data.val_fraction=0", "train.select_n=100"],
        "student_best_test_robust.keras",
        "test_robust_accuracy",
        3,
    ),
}


@pytest.mark.parametrize("select", sorted(SELECTIONS))
def test_the_report_uses_the_selected_checkpoint_and_keeps_the_last_epochs(
    tmp_path, select, capsys
):
    extra, checkpoint, metric, steps_per_epoch = SELECTIONS[select]
    run_dir = tmp_path / "run"
    code = main(
        args(
            run_dir,
            "method.name=pgd_at",
            "train.epochs=3",
            "data.train_limit=100",
            "output.tensorboard=false",
            "train.drop_remainder=false",
            f"train.select={select}",
            *extra,
        )
    )
    assert code == 0
    report = json.loads((run_dir / "report.json").read_text())
    student, last = report["student"], report["student_last"]
    assert student["path"] == checkpoint == student["selection"]["path"]
    assert student["selection"]["rule"] == select
    assert (run_dir / checkpoint).is_file()
    history = report["history"]
    if metric is None:
        assert student["selection"]["epoch"] == 3
        assert not any(key.startswith(("val_", "test_")) for key in history[0])
    else:
        values = [row[metric] for row in history]
        # The first epoch reaching the best value (later ties do not replace the checkpoint).
        assert student["selection"]["epoch"] == int(np.argmax(values)) + 1
    if select == "best_test":
        assert "TEST set" in student["selection"]["note"]
        assert "chosen on the TEST set" in capsys.readouterr().out
        assert not (run_dir / "student_best_robust.keras").exists()  # no validation split
    # Both the selected and the last epoch's figures, under the same attacks.
    assert last["path"] == "student_last.keras"
    assert set(last["attacks"]) == set(student["attacks"]) == {"clean", "fgsm", "pgd5"}
    assert last["same_as_selected"] == (student["selection"]["epoch"] == 3)
    assert last["clean_accuracy"] == pytest.approx(_clean_accuracy(run_dir / "student_last.keras"))
    assert student["clean_accuracy"] == pytest.approx(_clean_accuracy(run_dir / checkpoint))
    # The partial batch was trained on: one more optimiser step per epoch.
    with np.load(run_dir / "train_state.npz") as saved:
        iterations = [
            saved[k]
            for k in saved.files
            if k.startswith("optimizer_") and saved[k].dtype.kind == "i" and saved[k].ndim == 0
        ]
    assert iterations and int(iterations[0]) == 3 * steps_per_epoch


def test_validation_selection_without_validation_images_is_refused(tmp_path, capsys):
    run_dir = tmp_path / "run"
    # 0.001 of 192 images rounds to no validation image at all.
    assert main(args(run_dir, "method.name=pgd_at", "data.val_fraction=0.001")) == 2
    err = capsys.readouterr().err
    assert "data.val_fraction" in err and "train.select=best_val" in err
    assert not run_dir.exists()


def test_rslad_selection_before_its_first_evaluated_epoch_reports_the_last(tmp_path):
    # RSLAD's rule first evaluates after epoch 20: a 2-epoch run measures nothing and says so.
    run_dir = tmp_path / "run"
    extra = ["method.name=pgd_at", "train.epochs=2", "data.train_limit=100"]
    extra += ["output.tensorboard=false", "train.select=rslad_pgd20", "data.val_fraction=0"]
    assert main(args(run_dir, *extra)) == 0
    report = json.loads((run_dir / "report.json").read_text())
    selection = report["student"]["selection"]
    assert selection["rule"] == "rslad_pgd20" and selection["path"] == "student_last.keras"
    assert "RSLAD" in selection["note"] and "no test_pgd20_accuracy was ever" in selection["note"]
    # log.csv's "nan" (not measured that epoch) is null in report.json.
    assert [row["test_pgd20_accuracy"] for row in report["history"]] == [None, None]
    assert not (run_dir / "student_best_test_pgd20.keras").exists()


def _damaged_state_file(path, damage):
    arrays = {f"student_{i}": np.full((64, 64), i, np.float32) for i in range(2)}
    arrays["meta"] = np.array(json.dumps({"epoch": 1, "num_student": 2, "num_optimizer": 0}))
    np.savez(path, **arrays)
    data = bytearray(path.read_bytes())
    if damage == "truncated":
        data = data[: len(data) // 2]
    else:  # one flipped byte in the middle of the first array: its CRC no longer matches
        data[len(data) // 4] ^= 0xFF
    path.write_bytes(bytes(data))


@pytest.mark.parametrize("damage", ["truncated", "flipped_byte"])
def test_a_damaged_training_state_is_named_and_nothing_is_touched(tmp_path, capsys, damage):
    from dgad_tf.config import load_config

    run_dir = tmp_path / "run"
    run_dir.mkdir()
    overrides = TINY + [f"output.dir={run_dir}", "method.name=pgd_at", "output.quiet=true"]
    (run_dir / "config.yaml").write_text(load_config(None, overrides).to_yaml())
    (run_dir / "student_last.keras").write_bytes(b"earlier epochs")
    (run_dir / "log.csv").write_text("epoch,loss\n1,2.0\n")
    _damaged_state_file(run_dir / "train_state.npz", damage)
    before = {p.name: (p.read_bytes(), p.stat().st_mtime_ns) for p in run_dir.iterdir()}

    assert main(args(run_dir, "method.name=pgd_at")) == 2
    err = capsys.readouterr().err
    assert f"{run_dir / 'train_state.npz'} is damaged" in err
    assert "another output.dir" in err and "Traceback" not in err
    assert {p.name: (p.read_bytes(), p.stat().st_mtime_ns) for p in run_dir.iterdir()} == before
