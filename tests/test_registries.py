"""The extension points: a new evaluation attack, data source, export format or selection rule is
one object and one registration, and then the config, the library and the commands take its name.

Each test registers a toy entry through the public registration, uses it end to end, and checks
the outcome against a NumPy re-derivation; the entry is removed again afterwards.
"""

import contextlib
import json

import keras
import numpy as np
import pytest

from dgad_tf.config import ConfigError, load_config
from dgad_tf.registry import Registry


@contextlib.contextmanager
def registered(table, name):
    """Remove `name` from `table` when the block ends, whatever happens in it."""
    try:
        yield
    finally:
        if name in table:
            table.unregister(name)


# --------------------------------------------------------------------------- the table itself


def test_a_registry_keeps_order_refuses_a_taken_name_and_lists_the_choices():
    table = Registry("widget")
    table.register("b", 2)
    assert table.register("a")(1) == 1  # the decorator returns what it registers
    assert table.names() == ("b", "a")
    with pytest.raises(ValueError, match="widget 'a' is already registered"):
        table.register("a", 3)
    table.register("a", 3, replace=True)
    assert table.get("a") == 3
    with pytest.raises(ValueError, match=r"`kind` must be one of b, a; received kind='c'"):
        table.get("c", key="kind")
    with pytest.raises(ValueError, match="lower-case identifier"):
        table.register("Bad-Name", 4)


def test_an_entry_of_the_wrong_type_is_refused_by_every_table_naming_it():
    from dgad_tf.data import DATA_SOURCES, register_data_source
    from dgad_tf.eval_attacks import EVAL_ATTACKS, register_eval_attack
    from dgad_tf.selection import SELECTION_RULES, register_selection_rule
    from dgad_tf.serving.formats import EXPORT_FORMATS, register_export_format

    def loader(request):
        return None

    cases = [
        (register_data_source, DATA_SOURCES, "data source", "DataSource"),
        (register_eval_attack, EVAL_ATTACKS, "evaluation attack", "EvalAttack"),
        (register_selection_rule, SELECTION_RULES, "checkpoint-selection rule", "SelectionRule"),
        (register_export_format, EXPORT_FORMATS, "export format", "ExportFormat"),
    ]
    for register, table, kind, cls in cases:
        before = table.names()
        expected = rf"{kind} 'toy' must be an instance of {cls}; received function"
        with registered(table, "toy"):
            with pytest.raises(TypeError, match=expected):
                register("toy", loader)
            # The table's own `register`, and its decorator form, refuse it the same way.
            with pytest.raises(TypeError, match=expected):
                table.register("toy", loader)
            with pytest.raises(TypeError, match=expected):
                table.register("toy")(loader)
            assert table.names() == before


def test_a_selection_rule_on_a_validation_metric_needs_a_validation_split():
    from dgad_tf.selection import SELECTION_RULES, SelectionRule, register_selection_rule

    rule = SelectionRule(
        note="best val_clean_accuracy",
        summary="best val_clean_accuracy",
        metric="val_clean_accuracy",
        checkpoint="student_best_clean.keras",
    )
    with registered(SELECTION_RULES, "best_clean"):
        register_selection_rule("best_clean", rule)
        with pytest.raises(ConfigError) as err:
            load_config(None, ["data.val_fraction=0", "train.select=best_clean"])
        message = str(err.value)
        assert "`train.select`=best_clean chooses the checkpoint on the validation split" in message
        assert "data.val_fraction" in message
        # The alternatives offered are the registered rules that need no validation split.
        assert "train.select=last (or best_test / rslad_pgd20," in message
        assert load_config(None, ["train.select=best_clean"]).train.select == "best_clean"


# --------------------------------------------------------------------------- evaluation attacks


def _linear_model(seed=0):
    """Flatten + Dense with fixed random weights: its logits are a NumPy matrix product."""
    rng = np.random.default_rng(seed)
    model = keras.Sequential(
        [keras.Input((4, 4, 1)), keras.layers.Flatten(), keras.layers.Dense(5)]
    )
    kernel = rng.normal(size=(16, 5)).astype(np.float32)
    bias = rng.normal(size=5).astype(np.float32)
    model.layers[-1].set_weights([kernel, bias])
    return model, kernel, bias


def test_a_registered_evaluation_attack_runs_from_the_config_and_the_library():
    import tensorflow as tf

    from dgad_tf import evaluate_robustness
    from dgad_tf.eval_attacks import EVAL_ATTACKS, EvalAttack, register_eval_attack

    # The toy attack replaces every image by a black one: the model then sees only its bias.
    def blank(model_fn, settings):
        return lambda xb, yb: tf.zeros_like(xb)

    with registered(EVAL_ATTACKS, "blank"):
        register_eval_attack("blank", EvalAttack("every pixel set to 0", batch_fn=blank))
        cfg = load_config(overrides=["eval.attacks=[clean, blank, pgd2]"])
        assert cfg.eval.attacks == ("clean", "blank", "pgd2")

        model, kernel, bias = _linear_model()
        rng = np.random.default_rng(1)
        x = rng.uniform(size=(40, 4, 4, 1)).astype(np.float32)
        y = rng.integers(0, 5, size=40)
        report = evaluate_robustness(
            model, x, y, attacks=["clean", "blank"], batch_size=16, per_image=True
        )

        clean_correct = np.argmax(x.reshape(40, 16) @ kernel + bias, -1) == y
        # Attacked: only the clean-correct points, each now predicted argmax(bias).
        expected = clean_correct & (y == np.argmax(bias))
        assert np.array_equal(report["per_image"]["blank"], expected)
        assert report["attacks"]["blank"]["robust_accuracy"] == pytest.approx(expected.mean())
        assert report["attacks"]["blank"]["description"] == "every pixel set to 0"
    # Once removed, the name is refused again, and the message lists what is known.
    with pytest.raises(ConfigError, match=r"unknown attack 'blank'; known: clean, fgsm"):
        load_config(overrides=["eval.attacks=[clean, blank]"])


def test_the_builtin_attack_names_and_descriptions_are_unchanged():
    from dgad_tf.eval_attacks import known_names
    from dgad_tf.robustness import attack_description

    assert known_names() == (
        "clean, fgsm, cw_inf, cw_l2, autoattack, autoattack_custom and pgd<K> with K >= 1 steps"
    )
    assert attack_description("pgd20", 3) == (
        "PGD-20, L-inf, cross-entropy, uniform start, step eps/4, 3 restart(s)"
    )
    with pytest.raises(ConfigError, match="unknown attack 'pgd0'"):
        load_config(overrides=["eval.attacks=[pgd0]"])


# --------------------------------------------------------------------------- selection rules


def test_a_registered_selection_rule_picks_the_reported_checkpoint_of_a_run(tmp_path, capsys):
    from test_fit import _clean_accuracy, args

    from dgad_tf.fit import main
    from dgad_tf.selection import SELECTION_RULES, SelectionRule, register_selection_rule

    scores = [0.2, 0.9, 0.5]  # the toy metric per epoch: epoch 2 is the best

    class ToyScore(keras.callbacks.Callback):
        def __init__(self, cfg, test_arrays):
            super().__init__()
            self.n = len(test_arrays.y)

        def on_epoch_end(self, epoch, logs=None):
            logs["toy_score"] = scores[epoch]

    rule = SelectionRule(
        note="best toy_score (a test of the registry)",
        summary="best toy_score",
        metric="toy_score",
        checkpoint="student_best_toy.keras",
        test_split="toy_score after every epoch",
        callback=ToyScore,
    )
    with registered(SELECTION_RULES, "best_toy"):
        register_selection_rule("best_toy", rule)
        run_dir = tmp_path / "run"
        extra = ["method.name=pgd_at", "train.epochs=3", "output.tensorboard=false"]
        code = main(args(run_dir, *extra, "train.select=best_toy", "train.select_n=48"))
        assert code == 0
        assert "note: the student checkpoint was best toy_score" in capsys.readouterr().out
    report = json.loads((run_dir / "report.json").read_text())
    selection = report["student"]["selection"]
    assert selection["rule"] == "best_toy"
    assert selection["epoch"] == int(np.argmax(scores)) + 1
    assert selection["path"] == report["student"]["path"] == "student_best_toy.keras"
    assert report["student"]["clean_accuracy"] == pytest.approx(
        _clean_accuracy(run_dir / "student_best_toy.keras")
    )
    assert [row["toy_score"] for row in report["history"]] == pytest.approx(scores)
    with pytest.raises(ConfigError, match="`train.select` must be one of last, best_val"):
        load_config(overrides=["train.select=best_toy"])


# --------------------------------------------------------------------------- data sources


def test_a_registered_data_source_loads_from_the_config_and_feeds_the_pipeline(tmp_path):
    from dgad_tf import data

    # Stripes: class 1 images have white even rows, class 0 images are black.
    y_all = np.arange(50) % 2
    x_all = np.zeros([50, 4, 4, 1], np.uint8)
    x_all[y_all == 1, ::2] = 255
    asked = []

    def stripes(request):
        asked.append(request)
        train = data.Arrays(x_all[:40], y_all[:40])
        test = data.Arrays(x_all[40:], y_all[40:])
        return train, test, 2, ("plain", "striped")

    with registered(data.DATA_SOURCES, "stripes"):
        data.register_data_source("stripes", data.DataSource(stripes, needs={"path": ""}))
        with pytest.raises(ValueError, match="source 'stripes' needs `path`; received path=None"):
            data.load_splits("stripes")
        cfg = load_config(
            overrides=[
                "data.source=stripes",
                f"data.path={tmp_path}",
                "data.val_fraction=0.25",
                "data.test_limit=6",
            ]
        )
        splits = data.splits_from_config(cfg.data)
    assert asked[-1].path == str(tmp_path) and asked[-1].test_limit == 6
    assert (len(splits.train), len(splits.val), len(splits.test)) == (30, 10, 6)
    assert splits.class_names == ("plain", "striped")
    assert splits.image_shape == (4, 4, 1)
    # Every image keeps its label through the carve-out: striped exactly when labelled 1.
    for arrays in (splits.train, splits.val, splits.test):
        assert np.array_equal(arrays.x[:, 0, 0, 0] == 255, arrays.y == 1)
    batch_x, batch_y = next(iter(data.make_eval_dataset(splits.test, batch_size=6)))
    assert np.allclose(batch_x.numpy(), splits.test.x / 255.0)
    with pytest.raises(ConfigError, match="`data.source` must be one of digits, tfds"):
        load_config(overrides=["data.source=stripes"])
