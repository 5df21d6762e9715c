"""dgad_tf.rundir's reading of a run folder: state, config guard, checkpoints, log; no training.

Every file is made by hand (a `.keras` checkpoint is a zip holding `config.json`, which is all
`check_keras_file` asks of it before Keras loads it).
"""

import dataclasses
import json
import logging
import zipfile

import numpy as np
import pytest

from dgad_tf import rundir


def write_state(run_dir, meta, **arrays):
    run_dir.mkdir(exist_ok=True)
    np.savez(run_dir / rundir.STATE_FILE, meta=np.array(json.dumps(meta)), **arrays)


def test_a_whole_state_file_gives_its_metadata_verified_or_not(tmp_path):
    meta = {"epoch": 3, "num_student": 2, "num_optimizer": 1, "best": 0.5}
    arrays = {"student_0": np.ones(3), "student_1": np.zeros(2), "optimizer_0": np.ones(1)}
    write_state(tmp_path, meta, **arrays)
    assert rundir.read_state_meta(tmp_path) == meta
    assert rundir.read_state_meta(str(tmp_path), verify=True) == meta
    assert rundir.read_state_meta(tmp_path / "elsewhere") is None


@pytest.mark.parametrize("missing", ["student_1", "optimizer_0"])
def test_verify_reads_every_array_the_metadata_lists(tmp_path, missing):
    arrays = {"student_0": np.ones(3), "student_1": np.zeros(2), "optimizer_0": np.ones(1)}
    del arrays[missing]
    meta = {"epoch": 3, "num_student": 2, "num_optimizer": 1}
    write_state(tmp_path, meta, **arrays)
    assert rundir.read_state_meta(tmp_path) == meta  # the metadata alone reads
    with pytest.raises(rundir.RunError) as error:
        rundir.read_state_meta(tmp_path, verify=True)
    message = str(error.value)
    assert message.startswith(f"{tmp_path / rundir.STATE_FILE} is damaged (KeyError: ")
    assert missing in message.split("), so the run in")[0]
    assert "model.teacher_path" not in message
    assert "to train from the start; the student checkpoints in" in message


def test_a_pickled_member_is_refused_and_a_teacher_there_is_offered(tmp_path):
    meta = {"epoch": 1, "num_student": 1, "num_optimizer": 0}
    write_state(tmp_path, meta, student_0=np.array([{"a": 1}], dtype=object))
    (tmp_path / rundir.TEACHER_FILE).write_bytes(b"a teacher")
    with pytest.raises(rundir.RunError) as error:
        rundir.read_state_meta(tmp_path, verify=True)
    message = str(error.value)
    assert "is damaged (ValueError: " in message
    teacher = tmp_path / rundir.TEACHER_FILE
    assert (
        f"the run in {tmp_path} cannot resume from it (the file holds the optimiser state and "
        "the epoch to continue after); nothing was changed there. To go on, re-run with another "
        f"output.dir to train from the start, and model.teacher_path={teacher} reuses the "
        f"teacher trained there; the student checkpoints in {tmp_path} stay usable"
    ) in message


@pytest.mark.parametrize("source", ["npz", "folder", "tinyimagenet"])
def test_a_missing_data_path_is_refused_naming_it_for_sources_that_read_files(tmp_path, source):
    from dgad_tf.config import load_config

    missing = tmp_path / "nothing"
    cfg = load_config(None, [f"data.source={source}", f"data.path={missing}"])
    with pytest.raises(rundir.RunError) as error:
        rundir.check_data_path(cfg)
    assert str(error.value) == (
        f"data.path {missing} does not exist (data.source={source}); give the path of the "
        "dataset, or another data.source"
    )
    # a source that reads no files ignores data.path
    rundir.check_data_path(load_config(None, ["data.source=digits", f"data.path={missing}"]))


def test_the_teacher_file_is_checked_or_a_teacher_can_be_trained(tmp_path):
    import keras

    from dgad_tf.config import load_config

    def config(*overrides):
        return load_config(None, ["method.name=dgad", *overrides])

    path = tmp_path / "teacher.keras"
    keras.Sequential([keras.Input((4,)), keras.layers.Dense(3)]).save(path)
    # A whole file, named or found in the run folder: it exists, build.check_teacher loads it.
    assert rundir.check_teacher_file(config(f"model.teacher_path={path}"), tmp_path / "x") is True
    assert rundir.check_teacher_file(config("model.teacher_path="), tmp_path) is True
    missing = tmp_path / "none.keras"
    # None there, but one will be trained: no file yet, nothing to refuse.
    trained = config(f"model.teacher_path={missing}", "teacher_train.epochs=3")
    assert rundir.check_teacher_file(trained, tmp_path) is False
    with pytest.raises(rundir.RunError) as error:
        rundir.check_teacher_file(
            config(f"model.teacher_path={missing}", "teacher_train.epochs=0"), tmp_path
        )
    assert str(error.value) == (
        f"model.teacher_path: no teacher at {missing} and teacher_train.epochs=0; give a "
        "trained .keras teacher or set teacher_train.epochs"
    )
    text = tmp_path / "text.keras"
    text.write_text("not an archive")
    with pytest.raises(rundir.RunError) as error:
        rundir.check_teacher_file(config(f"model.teacher_path={text}"), tmp_path)
    assert str(error.value) == (
        f"model.teacher_path: {text} is not a .keras archive (truncated, or another kind of file)"
    )


def _teacher_run_state(run_dir, recorded):
    meta = {"epoch": 1, "num_student": 1, "num_optimizer": 0, "best": {}}
    if recorded is not None:
        meta["config"] = recorded
    write_state(run_dir / rundir.TEACHER_RUN_DIR, meta, student_0=np.ones(2))


def _teacher_cfg(**teacher_train):
    from dgad_tf.config import load_config

    values = {"epochs": 2, **teacher_train}
    return load_config(None, [f"teacher_train.{k}={v}" for k, v in values.items()])


@pytest.mark.parametrize("recorded", ["run", "teacher", None], ids=["earlier", "today", "none"])
def test_a_teacher_run_of_this_runs_teacher_resumes_however_it_recorded_its_config(
    tmp_path, recorded
):
    # An earlier version recorded the config of the run around the teacher run (no
    # config.yaml there); today's records the teacher's own; the oldest recorded none.
    cfg = _teacher_cfg()
    records = {"run": cfg, "teacher": rundir.teacher_run_config(cfg, tmp_path)}
    written = records.get(recorded)
    _teacher_run_state(tmp_path, None if written is None else written.to_yaml())
    rundir.check_teacher_run(cfg, tmp_path)


def test_the_teacher_run_writes_in_teacher_run_of_the_run_folder(tmp_path):
    cfg = _teacher_cfg()
    folder = tmp_path / "teacher_run"
    assert rundir.teacher_run_dir(str(tmp_path)) == folder
    teacher_cfg = rundir.teacher_run_config(cfg, tmp_path)
    assert teacher_cfg.output.dir == str(folder)  # where it writes, and its config.yaml says so
    assert teacher_cfg.model.student == cfg.model.teacher and teacher_cfg.model.teacher_path is None


@pytest.mark.parametrize(
    "recorded, said", [("run", "the config of the run around it"), (None, "no config")]
)
def test_an_earlier_teacher_run_says_it_resumes_and_what_its_state_records(
    tmp_path, caplog, recorded, said
):
    cfg = _teacher_cfg()
    _teacher_run_state(tmp_path, None if recorded is None else cfg.to_yaml())
    with caplog.at_level(logging.INFO, logger="dgad_tf.rundir"):
        rundir.check_teacher_run(cfg, tmp_path)
    assert caplog.messages == [
        f"{tmp_path / 'teacher_run'} was written by an earlier version (its {rundir.STATE_FILE} "
        f"records {said}): it resumes as the training of this run's teacher"
    ]


@pytest.mark.parametrize("recorded", ["run", None])
def test_an_earlier_teacher_run_with_a_damaged_state_is_refused_before_it_resumes(
    tmp_path, recorded
):
    cfg = _teacher_cfg()
    meta = {"epoch": 1, "num_student": 2, "num_optimizer": 0, "best": {}}
    if recorded is not None:
        meta["config"] = cfg.to_yaml()
    write_state(tmp_path / rundir.TEACHER_RUN_DIR, meta, student_0=np.ones(2))  # student_1 lost
    with pytest.raises(rundir.RunError) as error:
        rundir.check_teacher_run(cfg, tmp_path)
    assert str(error.value).startswith(
        f"{tmp_path / 'teacher_run' / rundir.STATE_FILE} is damaged (KeyError: "
    )


@pytest.mark.parametrize("config_yaml", [False, True])
def test_a_teacher_run_of_another_teacher_is_refused_naming_the_key(tmp_path, config_yaml):
    cfg = _teacher_cfg()
    other = _teacher_cfg(lr=0.05)
    if config_yaml:
        folder = tmp_path / rundir.TEACHER_RUN_DIR
        _teacher_run_state(tmp_path, None)
        (folder / rundir.CONFIG_FILE).write_text(
            rundir.teacher_run_config(other, tmp_path).to_yaml()
        )
    else:
        _teacher_run_state(tmp_path, rundir.teacher_run_config(other, tmp_path).to_yaml())
    with pytest.raises(rundir.RunError) as error:
        rundir.check_teacher_run(cfg, tmp_path)
    message = str(error.value)
    assert message.startswith(f"the teacher of this run is trained in {tmp_path / 'teacher_run'}")
    if not config_yaml:
        assert "differs from this one at `optimizer.lr` (0.05 there, 0.1 here)" in message


def config(*overrides):
    from dgad_tf.config import load_config

    return load_config(None, ["method.name=dgad", *overrides])


def checkpoint(path):
    path.parent.mkdir(parents=True, exist_ok=True)
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("config.json", "{}")
    return path


def test_a_run_folder_resumes_only_under_its_own_whole_config(tmp_path):
    cfg = config()
    run = tmp_path / "run"
    rundir.check_run_dir(cfg, run)  # new
    rundir.run_workspace(cfg, run).check()
    run.mkdir()
    (run / rundir.CONFIG_FILE).write_text(cfg.to_yaml())
    rundir.check_run_dir(cfg, run)  # the same config: it resumes
    assert rundir.run_workspace(cfg, run).resumes()  # named by its config.yaml
    with pytest.raises(rundir.RunError) as error:
        rundir.run_workspace(config("train.epochs=7"), run).check()
    assert str(error.value) == (
        f"output.dir {run} holds a run with a different config; choose another output.dir "
        "(nothing was changed there)"
    )
    write_state(run, {"epoch": 1, "num_student": 1, "num_optimizer": 0})  # student_0 missing
    with pytest.raises(rundir.RunError, match="is damaged \\(KeyError"):
        rundir.check_run_dir(cfg, run)
    (run / rundir.CONFIG_FILE).write_text("train: {epochs: [1\n")
    with pytest.raises(rundir.RunError) as error:
        rundir.check_run_dir(cfg, run)
    assert str(error.value).startswith(f"output.dir {run} holds an unreadable config.yaml: ")
    (run / rundir.CONFIG_FILE).unlink()
    (run / rundir.STATE_FILE).unlink()
    rundir.check_run_dir(cfg, run)  # empty again: new
    (run / "notes.txt").write_text("mine")
    with pytest.raises(rundir.RunError, match="is not empty and holds no config.yaml"):
        rundir.check_run_dir(cfg, run)  # other files, no run


def test_a_run_that_lost_its_config_resumes_only_when_its_records_name_this_config(
    tmp_path, caplog
):
    cfg = config()
    lost = f"output.dir {tmp_path} holds a run but its config.yaml is missing"
    meta = {"epoch": 1, "num_student": 0, "num_optimizer": 0}
    write_state(tmp_path, {**meta, "config": cfg.to_yaml()})
    with caplog.at_level(logging.WARNING, logger="dgad_tf.rundir"):
        rundir.check_run_dir(cfg, tmp_path)
    assert caplog.messages == [
        f"{lost}; its {rundir.STATE_FILE} records this same config: config.yaml is written "
        "back and the run resumes"
    ]
    other = config("train.epochs=7")
    with pytest.raises(rundir.RunError) as error:
        rundir.check_run_dir(other, tmp_path)
    assert str(error.value) == (
        f"{lost}, and the config its {rundir.STATE_FILE} records differs from this one at "
        f"`train.epochs` ({cfg.train.epochs!r} there, 7 here); re-run with the run's own config "
        "to resume it (config.yaml is then written back), or choose another output.dir "
        "(nothing was changed there)"
    )
    # A state that records no config: the report's hash decides.
    write_state(tmp_path, meta)
    report = tmp_path / rundir.REPORT_FILE
    report.write_text(json.dumps({"config_sha256": cfg.hash()}))
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="dgad_tf.rundir"):
        rundir.check_run_dir(cfg, tmp_path)
    assert caplog.messages == [
        f"{lost}; its {rundir.REPORT_FILE} names this same config (sha256): config.yaml is "
        "written back"
    ]
    nothing = (
        f"{lost}, and nothing there records this config (its {rundir.STATE_FILE} predates "
        "recording it, or was written for another config). If it is this command's run, write "
        "the config back with the same command plus `--print-config > "
        f"{tmp_path / rundir.CONFIG_FILE}` and re-run; otherwise choose another output.dir "
        "(nothing was changed there)"
    )
    for text in (json.dumps({"config_sha256": other.hash()}), "{not json", "{}"):
        report.write_text(text)
        with pytest.raises(rundir.RunError) as error:
            rundir.check_run_dir(cfg, tmp_path)
        assert str(error.value) == nothing
    (tmp_path / rundir.STATE_FILE).unlink()  # the report alone still marks a run
    with pytest.raises(rundir.RunError) as error:
        rundir.check_run_dir(cfg, tmp_path)
    assert str(error.value) == nothing
    (tmp_path / rundir.STATE_FILE).write_bytes(b"truncated")
    with pytest.raises(rundir.RunError) as error:
        rundir.check_run_dir(cfg, tmp_path)
    assert str(error.value).startswith(f"{lost}, and its {rundir.STATE_FILE} cannot be read (")


def test_a_recorded_config_that_is_not_a_mapping_is_refused_as_another_config(tmp_path):
    write_state(tmp_path, {"num_student": 0, "num_optimizer": 0, "config": "just words"})
    with pytest.raises(rundir.RunError) as error:
        rundir.check_run_dir(config(), tmp_path)
    assert "and the config its train_state.npz records differs from this one" in str(error.value)


def test_a_difference_in_a_nested_key_names_both_values(tmp_path):
    cfg = config("attack.eps=0.03")
    write_state(tmp_path, {"num_student": 0, "num_optimizer": 0, "config": cfg.to_yaml()})
    with pytest.raises(rundir.RunError) as error:
        rundir.check_run_dir(config("attack.eps=0.05"), tmp_path)
    assert "at `attack.eps` (0.03 there, 0.05 here)" in str(error.value)


def test_the_checkpoint_train_select_names_and_what_the_report_says_of_it(tmp_path, caplog):
    write_state(
        tmp_path,
        {
            "epoch": 5,
            "num_student": 0,
            "num_optimizer": 0,
            "best_epoch": {"val_robust_accuracy": 3},
        },
    )
    best = checkpoint(tmp_path / "student_best_robust.keras")
    path, selection = rundir.selected_checkpoint(config("train.select=best_val"), tmp_path)
    assert path == best
    assert selection == {
        "rule": "best_val",
        "path": "student_best_robust.keras",
        "epoch": 3,
        "note": "best val_robust_accuracy on the validation split carved from the training data",
        "same_as_last": False,
    }
    path, selection = rundir.selected_checkpoint(config("train.select=last"), tmp_path)
    assert path == tmp_path / rundir.LAST_CHECKPOINT
    assert selection == {
        "rule": "last",
        "path": rundir.LAST_CHECKPOINT,
        "epoch": 5,
        "note": "the last epoch's checkpoint",
        "same_as_last": True,
    }
    best.unlink()  # validation every N > epochs: no best checkpoint was ever written
    with caplog.at_level(logging.WARNING, logger="dgad_tf.rundir"):
        path, selection = rundir.selected_checkpoint(config("train.select=best_val"), tmp_path)
    assert path == tmp_path / rundir.LAST_CHECKPOINT
    assert (selection["epoch"], selection["same_as_last"]) == (5, True)
    assert selection["note"] == (
        "best val_robust_accuracy on the validation split carved from the training data; but "
        "no val_robust_accuracy was ever logged: the last checkpoint"
    )
    assert caplog.messages == [
        f"train.select=best_val: no val_robust_accuracy was logged in {tmp_path}; using "
        f"{rundir.LAST_CHECKPOINT}"
    ]
    # the best epoch being the last: the same weights as the last checkpoint
    write_state(
        tmp_path,
        {
            "epoch": 5,
            "num_student": 0,
            "num_optimizer": 0,
            "best_epoch": {"val_robust_accuracy": 5},
        },
    )
    checkpoint(best)
    assert rundir.selected_checkpoint(config("train.select=best_val"), tmp_path)[1]["same_as_last"]
    # no training state: epoch 0, whichever checkpoint
    fresh = tmp_path / "fresh"
    fresh.mkdir()
    assert rundir.selected_checkpoint(config("train.select=last"), fresh)[1]["epoch"] == 0
    checkpoint(fresh / "student_best_robust.keras")
    assert rundir.selected_checkpoint(config("train.select=best_val"), fresh)[1]["epoch"] == 0
    # a rule this process does not know (registered by another script) is named
    cfg = config()
    unknown = dataclasses.replace(cfg, train=dataclasses.replace(cfg.train, select="mine"))
    with pytest.raises(ValueError) as error:
        rundir.selected_checkpoint(unknown, fresh)
    assert str(error.value).startswith("`train.select` must be one of last, best_val")
    assert str(error.value).endswith("; received train.select='mine'")


def test_log_csv_reads_as_floats_with_none_for_a_metric_missing_that_epoch(tmp_path):
    log_csv = tmp_path / rundir.LOG_FILE
    assert rundir.read_log(log_csv) == []
    log_csv.write_text(
        "epoch,loss,val_robust_accuracy,test_pgd20\n"
        "0,2.5,NA,nan\n"
        "epoch,loss,val_robust_accuracy,test_pgd20\n"  # a resumed run repeats the header
        "1,2.0,0.25,\n"
    )
    assert rundir.read_log(log_csv) == [
        {"epoch": 0.0, "loss": 2.5, "val_robust_accuracy": None, "test_pgd20": None},
        {"epoch": 1.0, "loss": 2.0, "val_robust_accuracy": 0.25, "test_pgd20": None},
    ]


def test_a_run_folder_gives_the_checkpoint_its_config_selects(tmp_path):
    run = tmp_path / "run"
    last = checkpoint(run / rundir.LAST_CHECKPOINT)
    assert rundir.resolve_model_path(run) == last  # no config: the last when no best
    best = checkpoint(run / "student_best_robust.keras")
    assert rundir.resolve_model_path(str(run)) == best  # no config: best-robust first
    (run / rundir.CONFIG_FILE).write_text(config("train.select=last").to_yaml())
    assert rundir.run_config(run).train.select == "last"
    assert rundir.run_config(last).train.select == "last"  # a file in the run folder
    assert rundir.resolve_model_path(run) == last  # the config's rule
    assert rundir.keras_model_path(run) == last
    assert rundir.keras_model_path(best) == best
    assert rundir.run_config(tmp_path) is None
    with pytest.raises(FileNotFoundError) as error:
        rundir.resolve_model_path(tmp_path / "none")
    assert str(error.value) == f"`model`: no model at {tmp_path / 'none'}"
    with pytest.raises(FileNotFoundError):
        rundir.keras_model_path(tmp_path / "none")
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(FileNotFoundError) as error:
        rundir.resolve_model_path(empty)
    held = "['student_best_robust.keras', 'student_last.keras']"
    assert str(error.value) == f"`model` run directory {str(empty)!r} holds none of {held}"
    with pytest.raises(ValueError) as error:
        rundir.keras_model_path(empty)
    assert str(error.value) == (
        f"`model`: {empty} is neither a SavedModel directory (no saved_model.pb) nor a run "
        f"folder with a checkpoint (`model` run directory {str(empty)!r} holds none of {held})"
    )
    (run / rundir.LAST_CHECKPOINT).write_text("half a file")  # a checkpoint found, damaged
    with pytest.raises(ValueError) as error:
        rundir.resolve_model_path(run)
    assert str(error.value) == (
        f"`model`: {last} is not a .keras archive (truncated, or another kind of file)"
    )
    text = tmp_path / "m.keras"
    text.write_text("text")
    with pytest.raises(ValueError) as error:
        rundir.keras_model_path(text)
    assert str(error.value) == (
        f"`model`: {text} is not a .keras archive (truncated, or another kind of file), nor a "
        "SavedModel directory"
    )
