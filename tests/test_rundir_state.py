"""dgad_tf.rundir's reading of a run folder's train_state.npz: no training, files made by hand."""

import json

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
