"""Tuning: the typed `tune:` section, the HyperModel's data and score, searches, resuming, CLI."""

import dataclasses
import pathlib

import keras
import keras_tuner
import numpy as np
import pytest
import yaml

from dgad_tf import data as data_lib
from dgad_tf import losses, search, tuning
from dgad_tf.config import ConfigError, config_from_dict, load_config
from dgad_tf.rundir import RunError
from dgad_tf.tune import main as tune_main

CONFIGS = pathlib.Path(__file__).resolve().parents[1] / "configs"

TINY = {
    "data": {
        "source": "digits",
        "flip": False,
        "train_limit": 192,
        "test_limit": 48,
        "val_fraction": 0.25,
    },
    "model": {"student": "small-cnn"},
    "method": {"name": "pgd_at"},
    "attack": {"eps": 0.1, "step_size": 0.05, "steps": 1},
    "optimizer": {"lr": 0.05, "milestones": []},
    "train": {"epochs": 1, "batch_size": 48, "val_robust_n": 24, "val_robust_steps": 1},
    "output": {"tensorboard": False, "quiet": True},
}
SPACE = {
    "optimizer.lr": {"type": "choice", "values": [0.01, 0.1]},
    "attack.steps": {"type": "int", "min": 1, "max": 2},
}


def tiny_cfg(out_dir, space=None, **tune):
    values = {
        **TINY,
        "output": {**TINY["output"], "dir": str(out_dir)},
        "tune": {"space": space or SPACE, "max_trials": 2, **tune},
    }
    return config_from_dict(values)


def space_of(entries, **tune):
    """The search space of a config whose `tune:` section holds `entries` (read at load)."""
    return config_from_dict({"tune": {"space": entries, **tune}}).tune.space


# --------------------------------------------------------------------------- parser


def test_parser_reads_every_dimension_type():
    space = space_of(
        {
            "optimizer.lr": {"type": "float", "min": 0.001, "max": 0.1, "log": True},
            "attack.steps": {"type": "int", "min": 1, "max": 7, "step": 3},
            "method.name": {"type": "choice", "values": ["pgd_at", "trades"]},
            "method.use_els": {"type": "bool"},
            "method.beta": {"type": "choice", "values": [0, 0.5, 2]},
        }
    )
    dims = list(space.values())
    assert [(key, d.type) for key, d in space.items()] == [
        ("optimizer.lr", "float"),
        ("attack.steps", "int"),
        ("method.name", "choice"),
        ("method.use_els", "bool"),
        ("method.beta", "choice"),
    ]
    assert (dims[0].min, dims[0].max, dims[0].log) == (0.001, 0.1, True)
    assert (dims[1].min, dims[1].max, dims[1].step) == (1, 7, 3)
    assert dims[2].values == ("pgd_at", "trades")
    # Mixed 0 / 0.5 become floats, so KerasTuner sees one type.
    assert dims[4].values == (0.0, 0.5, 2.0) and all(type(v) is float for v in dims[4].values)


def test_nested_space_reads_like_dotted_keys():
    dotted = space_of({"method.beta": {"type": "float", "min": 0, "max": 4}})
    nested = space_of({"method": {"beta": {"type": "float", "min": 0, "max": 4}}})
    assert dotted == nested


@pytest.mark.parametrize(
    "entry, message",
    [
        ({"type": "flaot", "min": 0, "max": 4}, "unknown type 'flaot'"),
        ({"type": "float", "min": 0}, "needs `max`"),
        ({"type": "float", "min": 3, "max": 1}, "`min` must be below `max`"),
        ({"type": "float", "min": 0, "max": 1, "log": True}, "needs min > 0"),
        ({"type": "float", "min": 0, "max": 4, "lg": True}, "unknown field 'lg'"),
        ({"type": "choice", "values": []}, "non-empty list `values`"),
        ({"type": "choice", "values": [1, "a"]}, "of one type"),
        ({"type": "choice", "values": [1, 1]}, "repeat"),
        ({"type": "float", "min": -1, "max": 4}, "`method.beta` must be >= 0"),
        (0.5, "must be a mapping"),
    ],
)
def test_bad_entry_is_rejected_naming_the_key(entry, message):
    with pytest.raises(ConfigError, match="tune.space.method.beta") as err:
        space_of({"method.beta": entry})
    assert message in str(err.value)


@pytest.mark.parametrize("key", ["method.betta", "foo", "method", "method.beta.x"])
def test_path_that_is_not_a_config_field_is_rejected(key):
    with pytest.raises(ConfigError, match=f"tune.space.{key}: `{key}` is not a config"):
        space_of({key: {"type": "bool"}})


def test_fields_fixed_for_the_whole_search_are_rejected():
    with pytest.raises(ConfigError, match="tune.space.data.seed: .*cannot be searched"):
        space_of({"data.seed": {"type": "int", "min": 0, "max": 3}})


def test_checkpoint_selection_is_not_a_search_dimension():
    with pytest.raises(ConfigError, match="tune.space.train.select: .*cannot be searched"):
        space_of({"train.select": {"type": "choice", "values": ["last", "best_test"]}})


def test_float_dimension_on_an_integer_field_is_rejected():
    with pytest.raises(ConfigError, match="tune.space.attack.steps: .*integer field"):
        space_of({"attack.steps": {"type": "float", "min": 1, "max": 3}})


def test_bounds_are_checked_against_the_base_config():
    with pytest.raises(ConfigError, match="tune.space.attack.eps: `attack.eps` must be in"):
        space_of({"attack.eps": {"type": "float", "min": 0.1, "max": 1.5}})


def test_tune_section_defaults_and_weighted_objective():
    tune = config_from_dict({"tune": {"space": SPACE}}).tune
    assert (tune.metric, tune.tuner, tune.max_trials, tune.epochs) == (
        "val_robust_accuracy",
        "random",
        10,
        None,
    )
    weighted = config_from_dict(
        {"tune": {"space": SPACE, "objective": {"clean_weight": 0.3, "robust_weight": 0.7}}}
    ).tune
    assert (weighted.metric, weighted.weights) == ("val_score", (0.3, 0.7))


def test_tune_section_round_trips_through_yaml(tmp_path):
    cfg = load_config(
        CONFIGS / "tune_quickstart.yaml", ["tune.objective={clean_weight: 0.3, robust_weight: 0.7}"]
    )
    path = tmp_path / "config.yaml"
    path.write_text(cfg.to_yaml())
    again = load_config(path)
    assert again == cfg and again.hash() == cfg.hash()
    assert config_from_dict({}).to_dict()["tune"] == {}  # runs without a search write `tune: {}`


@pytest.mark.parametrize(
    "extra, message",
    [
        ({"objective": "val_acc"}, "tune.objective"),
        ({"objective": {"clean_weight": -1}}, "tune.objective.clean_weight"),
        ({"tuner": "grid"}, "tune.tuner"),
        ({"max_trials": 0}, "tune.max_trials"),
        ({"spaces": {}}, "unknown key `tune.spaces`"),
    ],
)
def test_bad_tune_keys_are_named(extra, message):
    with pytest.raises(ConfigError, match=message):
        config_from_dict({"tune": {"space": SPACE, **extra}})


def test_tune_quickstart_config_parses():
    cfg = load_config(CONFIGS / "tune_quickstart.yaml")
    assert set(cfg.tune.space) == {"method.beta", "optimizer.lr", "method.distill_weight"}


def test_a_search_needs_a_space(tmp_path):
    with pytest.raises(ConfigError, match="no `tune.space`"):
        search.run_search(config_from_dict({**TINY, "output": {"dir": str(tmp_path)}}))


# --------------------------------------------------------------------------- pieces


def test_validation_score_is_written_before_later_callbacks_read_the_logs():
    seen = []

    class Reader(keras.callbacks.Callback):
        def on_epoch_end(self, epoch, logs=None):
            seen.append(dict(logs))

    score = tuning.ValidationScore(clean_weight=0.3, robust_weight=0.7)
    callbacks = keras.callbacks.CallbackList([score, Reader()])
    callbacks.on_epoch_end(0, {"loss": 1.0})
    callbacks.on_epoch_end(1, {"loss": 0.5, "val_clean_accuracy": 0.5, "val_robust_accuracy": 0.25})
    assert "val_score" not in seen[0]
    assert seen[1]["val_score"] == pytest.approx(0.3 * 0.5 + 0.7 * 0.25)


def test_best_epoch_ignores_epochs_without_validation():
    logs = [
        {"epoch": 1, "val_robust_accuracy": 0.2},
        {"epoch": 2, "loss": 0.1},
        {"epoch": 3, "val_robust_accuracy": 0.4},
        {"epoch": 4, "val_robust_accuracy": 0.3},
    ]
    assert tuning.best_epoch_metrics(logs, "val_robust_accuracy")["epoch"] == 3


def test_schedule_is_compressed_to_the_trial_length():
    cfg = config_from_dict({"train": {"epochs": 15}, "optimizer": {"milestones": [12]}})
    short = tuning.compress_schedule(cfg, 4)
    assert short.train.epochs == 4 and short.optimizer.milestones == (3,)  # 12 * 4 / 15 = 3.2
    assert tuning.compress_schedule(cfg, 15) is cfg


def test_validation_runs_every_n_epochs_and_on_the_last():
    assert tuning.validation_epochs(0, 5, 2) == [2, 4, 5]
    assert tuning.validation_epochs(2, 4, 1) == [3, 4]


# --------------------------------------------------------------------------- HyperModel


@pytest.fixture(scope="module")
def tiny_splits():
    cfg = tiny_cfg("unused")
    from dgad_tf import build

    return build.load_data(cfg)


def test_build_puts_the_sampled_values_into_the_distiller(tmp_path, tiny_splits):
    cfg = tiny_cfg(tmp_path)
    hypermodel = tuning.DistillerHyperModel(cfg, tiny_splits, None)
    hp = keras_tuner.HyperParameters()
    hp.values.update({"optimizer.lr": 0.1, "attack.steps": 2})
    distiller = hypermodel.build(hp)
    assert distiller.attack.steps == 2 and distiller.method_loss == losses.PGDAT()
    assert float(distiller.optimizer.learning_rate) == pytest.approx(0.1)


def test_fit_scores_on_the_validation_split_not_the_test_split(tmp_path, tiny_splits, monkeypatch):
    assert not np.array_equal(tiny_splits.val.x[:24], tiny_splits.test.x[:24])
    evaluated = []
    original = data_lib.make_eval_dataset

    def spy(arrays, batch_size):
        evaluated.append(arrays)
        return original(arrays, batch_size)

    monkeypatch.setattr(data_lib, "make_eval_dataset", spy)
    cfg = tiny_cfg(tmp_path)
    hypermodel = tuning.DistillerHyperModel(cfg, tiny_splits, None)
    hp = keras_tuner.HyperParameters()
    distiller = hypermodel.build(hp)
    metrics = hypermodel.fit(hp, distiller, verbose=0)

    assert len(evaluated) == 1
    np.testing.assert_array_equal(evaluated[0].x, tiny_splits.val.x[:24])
    # Independent check: the reported clean accuracy is the student's on those 24 val images.
    logits = distiller.student(data_lib.to_float(tiny_splits.val.x[:24]), training=False)
    expected = np.mean(np.argmax(np.asarray(logits), -1) == tiny_splits.val.y[:24])
    assert metrics["val_clean_accuracy"] == pytest.approx(expected)
    assert metrics["val_robust_accuracy"] == metrics["val_score"]


# --------------------------------------------------------------------------- searches


@pytest.fixture(scope="module")
def finished_search(tmp_path_factory, digits_teacher):
    """A 2-trial random search with DGAD and a small trained teacher file."""
    root = tmp_path_factory.mktemp("search")
    teacher_path = digits_teacher
    values = {
        **TINY,
        "method": {"name": "dgad"},
        "model": {"student": "small-cnn", "teacher_path": str(teacher_path)},
        "output": {"dir": str(root / "out"), "tensorboard": True, "quiet": True},
        "train": {**TINY["train"], "epochs": 3},
        "tune": {
            "space": {
                "method.beta": {"type": "float", "min": 0, "max": 4},
                "optimizer.lr": {"type": "choice", "values": [0.01, 0.1]},
            },
            "max_trials": 2,
            "epochs": 1,
        },
    }
    cfg = config_from_dict(values)
    return cfg, search.run_search(cfg, verbose=0)


def test_search_runs_every_trial_and_writes_a_loadable_best_config(finished_search):
    cfg, result = finished_search
    assert result.trials_run == 2 and len(result.rows) == 2
    best = load_config(result.best_config_path)
    assert best.hash() == result.best_config.hash()
    best_row = next(r for r in result.rows if r["trial"] == result.best_trial)
    assert best_row["val_score"] == max(r["val_score"] for r in result.rows)
    assert best.method.beta == pytest.approx(best_row["method.beta"])
    assert best.optimizer.lr == pytest.approx(best_row["optimizer.lr"])
    # A config for fit: the full epochs, no tune section, the tuned-against teacher, a new dir.
    assert best.train.epochs == 3 and not best.tune.space
    assert best.model.teacher_path == cfg.model.teacher_path
    assert not pathlib.Path(best.output.dir).exists()


def test_search_writes_per_trial_tensorboard_logs(finished_search):
    _, result = finished_search
    for row in result.rows:
        assert list((result.out_dir / "tensorboard" / row["trial"]).rglob("events.out.*"))


def test_table_lists_every_trial_and_marks_the_best(finished_search):
    _, result = finished_search
    lines = search.format_trials_table(result.rows, result.best_trial).splitlines()
    assert "method.beta" in lines[0] and "val_robust_accuracy" in lines[0]
    assert len(lines) == 2 + len(result.rows)
    assert [line[0] for line in lines[2:]].count("*") == 1


def test_a_different_search_in_the_same_directory_is_refused(finished_search):
    cfg, result = finished_search
    changed = dataclasses.replace(cfg, tune=dataclasses.replace(cfg.tune, epochs=2))
    with pytest.raises(RunError, match="`tune.epochs` differs"):
        search.run_search(changed, verbose=0)


def test_rerun_with_more_trials_runs_only_the_new_ones(tmp_path):
    first = search.run_search(tiny_cfg(tmp_path, max_trials=1), verbose=0)
    assert first.trials_run == 1
    second = search.run_search(tiny_cfg(tmp_path, max_trials=2), verbose=0)
    assert second.trials_run == 1
    assert [r["trial"] for r in second.rows] == ["0", "1"]
    assert second.rows[0] == first.rows[0]  # the finished trial was kept, not retrained


def test_interrupted_trial_is_rerun_and_finished_ones_are_not(tmp_path, monkeypatch):
    calls = []
    original = tuning.DistillerHyperModel.fit

    def interrupt_second(self, hp, model, *args, **kwargs):
        calls.append(dict(hp.values))
        if len(calls) == 2:
            raise KeyboardInterrupt
        return original(self, hp, model, *args, **kwargs)

    monkeypatch.setattr(tuning.DistillerHyperModel, "fit", interrupt_second)
    with pytest.raises(KeyboardInterrupt):
        search.run_search(tiny_cfg(tmp_path), verbose=0)
    monkeypatch.setattr(tuning.DistillerHyperModel, "fit", original)
    result = search.run_search(tiny_cfg(tmp_path), verbose=0)
    assert result.trials_run == 1
    assert [r["status"] for r in result.rows] == ["COMPLETED", "COMPLETED"]
    rerun = {k: result.rows[1][k] for k in SPACE}
    assert rerun == calls[1]  # the interrupted trial's values, not new ones


# --------------------------------------------------------------------------- CLI


@pytest.mark.parametrize(
    "entry, named",
    [
        ("method.beta: {type: flaot, min: 0, max: 4}", "tune.space.method.beta: unknown type"),
        ("method.betta: {type: bool}", "tune.space.method.betta"),
    ],
)
def test_cli_bad_space_exits_2_naming_the_key_and_writes_nothing(tmp_path, capsys, entry, named):
    config = tmp_path / "tune.yaml"
    config.write_text(
        yaml.safe_dump({k: v for k, v in TINY.items()}) + f"tune:\n  space:\n    {entry}\n"
    )
    out = tmp_path / "out"
    assert tune_main(["--config", str(config), "--out", str(out)]) == 2
    assert named in capsys.readouterr().err
    assert not out.exists()


def test_cli_bad_config_exits_2(tmp_path, capsys):
    out = tmp_path / "out"
    code = tune_main(
        [
            "--config",
            str(CONFIGS / "tune_quickstart.yaml"),
            "--out",
            str(out),
            "--set",
            "attack.steps=-1",
        ]
    )
    assert code == 2 and "attack.steps" in capsys.readouterr().err
    assert not out.exists()


def test_trials_are_ranked_by_robust_accuracy_not_clean(tmp_path):
    # Method `clean` trains both trials identically (same seed, data and init; one epoch, so the
    # best epoch is the same one); `attack.eps` only sets the validation attack. So both trials
    # have the same clean accuracy, and at eps 1 the
    # attack turns every image into another: the trial validated at eps 1 is far less robust.
    # KerasTuner breaks ties in trial order, and trial 0 is the eps-1 trial, so a search ranking
    # by clean accuracy would name it best.
    values = {
        **TINY,
        "method": {"name": "clean"},
        "train": {**TINY["train"], "batch_size": 16},
        "optimizer": {"lr": 0.1, "milestones": []},
        "output": {**TINY["output"], "dir": str(tmp_path)},
        "tune": {
            "space": {"attack.eps": {"type": "choice", "values": [1.0, 0.0]}},
            "max_trials": 2,
        },
    }
    cfg = config_from_dict(values)
    result = search.run_search(cfg, verbose=0)
    rows = {row["attack.eps"]: row for row in result.rows}
    assert rows[1.0]["trial"] == "0"
    assert rows[1.0]["val_clean_accuracy"] == rows[0.0]["val_clean_accuracy"] > 0.3, rows
    assert rows[0.0]["val_robust_accuracy"] > rows[1.0]["val_robust_accuracy"] + 0.1
    assert result.best_trial == rows[0.0]["trial"]
    assert result.best_config.attack.eps == 0.0


class _ConstantStudentInEpoch2Validation(keras.callbacks.Callback):
    """While epoch 2 is validated, the student's last layer answers `label` for every image.

    That validation then scores the share of `label` both clean and attacked (an answer that
    ignores the image cannot be attacked), while the epochs around it score the trained
    student: high clean accuracy, next to no robust accuracy at eps 1. Records each epoch's logs
    as the callbacks after the score see them.
    """

    def __init__(self, student, label):
        super().__init__()
        self.dense, self.label, self.epoch, self.seen = student.layers[-1], label, 0, []

    def on_epoch_begin(self, epoch, logs=None):
        self.epoch = epoch

    def on_test_begin(self, logs=None):
        if self.epoch == 1:
            kernel, bias = self.dense.get_weights()
            self.trained = [kernel, bias]
            self.dense.set_weights([np.zeros_like(kernel), 10.0 * np.eye(len(bias))[self.label]])

    def on_test_end(self, logs=None):
        if self.epoch == 1:
            self.dense.set_weights(self.trained)

    def on_epoch_end(self, epoch, logs=None):
        self.seen.append(dict(logs))


def test_a_trials_score_is_its_best_robust_epoch_not_its_best_clean_or_last(tmp_path, tiny_splits):
    values = {
        **TINY,
        "method": {"name": "clean"},  # trains on clean images: `attack` only validates
        "attack": {"eps": 1.0, "step_size": 0.25, "steps": 1},
        "train": {**TINY["train"], "epochs": 3, "batch_size": 16, "val_robust_steps": 5},
        "optimizer": {"lr": 0.1, "milestones": []},
        "output": {**TINY["output"], "dir": str(tmp_path)},
        "tune": {"space": {"optimizer.lr": {"type": "choice", "values": [0.1]}}},
    }
    cfg = config_from_dict(values)
    hypermodel = tuning.DistillerHyperModel(cfg, tiny_splits, None)
    hp = keras_tuner.HyperParameters()
    distiller = hypermodel.build(hp)
    labels = tiny_splits.val.y[: cfg.train.val_robust_n]
    label = int(np.bincount(labels).argmax())
    recorder = _ConstantStudentInEpoch2Validation(distiller.student, label)
    metrics = hypermodel.fit(hp, distiller, callbacks=[recorder], verbose=0)

    clean = [logs["val_clean_accuracy"] for logs in recorder.seen]
    robust = [logs["val_robust_accuracy"] for logs in recorder.seen]
    share = np.mean(labels == label)
    assert clean[1] == pytest.approx(share) and robust[1] == pytest.approx(share)
    # Epoch 2 is the most robust, neither the cleanest nor the last.
    assert robust[1] > max(robust[0], robust[2]) and clean[1] < max(clean[0], clean[2])
    assert metrics["epoch"] == 2
    assert metrics["val_robust_accuracy"] == metrics["val_score"] == pytest.approx(share)
    assert metrics["val_clean_accuracy"] == pytest.approx(share)
