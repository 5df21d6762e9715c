"""The range and choice checks of a config: each bound is accepted at its edge and refused past it,
and the refusal names the key, what it must be and the value received (what a user reads).

No training: every case is one `load_config` call.
"""

import pytest

from dgad_tf.config import ConfigError, check_attack_names, check_export_formats, load_config

CLEAN = ["method.name=clean"]  # the one method that trains on no adversarial examples


def refusal(overrides):
    with pytest.raises(ConfigError) as caught:
        load_config(None, overrides)
    return str(caught.value)


@pytest.mark.parametrize(
    "overrides",
    [
        ["data.val_fraction=0", "train.select=last"],
        ["data.val_fraction=0.999"],
        ["data.train_limit=1", "data.test_limit=1", "data.image_size=1", "data.crop_padding=0"],
        ["data.source=tfds", "data.name=mnist"],
        ["data.source=npz", "data.path=x.npz"],
        ["data.source=folder", "data.path=images"],
        ["data.source=tinyimagenet", "data.path=tiny"],
        ["model.normalize_mean=[0.5, 0.5]", "model.normalize_std=[0.01, 2]", "model.init=keras"],
        ["teacher_train.method=trades", "teacher_train.lr=0.001"],
        # `clean` trains on no adversarial examples: a zero attack is legal, and so is the top.
        [*CLEAN, "attack.eps=0", "attack.step_size=0", "attack.steps=0", "attack.start_std=0"],
        [*CLEAN, "attack.eps=1", "attack.step_size=1", "attack.start=none"],
        # The smallest attack an adversarial method trains on: one step as long as eps.
        ["attack.steps=1", "attack.step_size=8/255", "teacher_train.epochs=1"],
        [
            "optimizer.momentum=0",
            "optimizer.weight_decay=0",
            "optimizer.gamma=1",
            "optimizer.warmup_epochs=0",
            "optimizer.milestones=[3, 3]",
            "optimizer.schedule=cosine",
        ],
        ["optimizer.momentum=0.999", "optimizer.gamma=0.001", "optimizer.lr=0.0001"],
        [
            "train.epochs=1",
            "train.batch_size=1",
            "train.val_every=1",
            "train.val_robust_n=1",
            "train.val_robust_steps=0",
            "train.steps_per_execution=1",
            "train.jit_compile=false",
            "train.select_n=1",
            "train.precision=mixed_float16",
            "train.select=rslad_pgd20",
        ],
        ["train.jit_compile=true"],
        ["eval.n=1", "eval.batch_size=1", "eval.attacks=[' PGD7 ', '', Clean]"],
        ["export.formats=[tflite_int8, ' saved_model', '']"],
        ["distribute.strategy=none", "distribute.logical_cpus=0"],
        ["tune.objective={robust_weight: 1}", "tune.tuner=bayesian", "tune.max_trials=1"],
        ["tune.objective={clean_weight: 0.5, robust_weight: 0}", "tune.epochs=1", "tune.seed=0"],
        ["tune.objective=val_clean_accuracy"],
    ],
)
def test_every_bound_is_accepted_at_its_edge(overrides):
    load_config(None, overrides)


NEEDS = "for method.name=dgad, which train on adversarial examples"


@pytest.mark.parametrize(
    "overrides, key, requirement, received",
    [
        (
            ["data.source=csv"],
            "data.source",
            "one of digits, tfds, npz, folder, tinyimagenet",
            "'csv'",
        ),
        (["data.val_fraction=1"], "data.val_fraction", "in [0, 1)", "1.0"),
        (["data.val_fraction=-0.1"], "data.val_fraction", "in [0, 1)", "-0.1"),
        (["data.train_limit=0"], "data.train_limit", ">= 1 or null", "0"),
        (["data.test_limit=0"], "data.test_limit", ">= 1 or null", "0"),
        (["data.image_size=0"], "data.image_size", ">= 1 or null", "0"),
        (["data.crop_padding=-1"], "data.crop_padding", ">= 0 or null", "-1"),
        (
            ["data.source=tfds", "data.name=''"],
            "data.name",
            "a TFDS dataset name when data.source=tfds",
            "''",
        ),
        (["data.source=npz", "data.path=''"], "data.path", "a path when data.source=npz", "''"),
        (["data.source=folder"], "data.path", "a path when data.source=folder", "None"),
        (["data.source=tinyimagenet"], "data.path", "a path when data.source=tinyimagenet", "None"),
        (
            ["model.normalize_mean=[0.5, 0.5]", "model.normalize_std=[1]"],
            "model.normalize_std",
            "as long as model.normalize_mean",
            "(1.0,)",
        ),
        (
            ["model.normalize_mean=[0.5, 0.5]", "model.normalize_std=[1, 0]"],
            "model.normalize_std",
            "positive",
            "(1.0, 0.0)",
        ),
        (["model.init=xavier"], "model.init", "one of torch, keras", "'xavier'"),
        (["teacher_train.method=ard"], "teacher_train.method", "one of pgd_at, trades", "'ard'"),
        (["teacher_train.epochs=-1"], "teacher_train.epochs", ">= 0", "-1"),
        (["teacher_train.lr=0"], "teacher_train.lr", "> 0", "0.0"),
        ([*CLEAN, "attack.eps=1.01"], "attack.eps", "in [0, 1]", "1.01"),
        ([*CLEAN, "attack.eps=-0.1"], "attack.eps", "in [0, 1]", "-0.1"),
        ([*CLEAN, "attack.step_size=1.5"], "attack.step_size", "in [0, 1]", "1.5"),
        ([*CLEAN, "attack.step_size=-0.1"], "attack.step_size", "in [0, 1]", "-0.1"),
        ([*CLEAN, "attack.steps=-1"], "attack.steps", ">= 0", "-1"),
        (["attack.start=zero"], "attack.start", "one of auto, uniform, gaussian, none", "'zero'"),
        (["attack.start_std=-0.1"], "attack.start_std", ">= 0", "-0.1"),
        (["attack.eps=0"], "attack.eps", f"> 0 {NEEDS}", "0.0"),
        (
            [*CLEAN, "teacher_train.epochs=1", "attack.eps=0"],
            "attack.eps",
            "> 0 for teacher_train.method=pgd_at, which train on adversarial examples",
            "0.0",
        ),
        (
            ["teacher_train.epochs=1", "attack.eps=0"],
            "attack.eps",
            "> 0 for method.name=dgad and teacher_train.method=pgd_at, which train on",
            "0.0",
        ),
        (["attack.steps=0"], "attack.steps", f">= 1 {NEEDS}", "0"),
        (["attack.step_size=0"], "attack.step_size", f"> 0 {NEEDS}", "0.0"),
        (
            ["attack.eps=0.25", "attack.step_size=0.26"],
            "attack.step_size",
            "<= attack.eps=0.25 (a longer step only overshoots the eps-ball and is clipped back)",
            "0.26",
        ),
        (["optimizer.lr=0"], "optimizer.lr", "> 0", "0.0"),
        (["optimizer.momentum=1"], "optimizer.momentum", "in [0, 1)", "1.0"),
        (["optimizer.momentum=-0.1"], "optimizer.momentum", "in [0, 1)", "-0.1"),
        (["optimizer.weight_decay=-0.1"], "optimizer.weight_decay", ">= 0", "-0.1"),
        (
            ["optimizer.schedule=step"],
            "optimizer.schedule",
            "one of piecewise, cosine, constant",
            "'step'",
        ),
        (["optimizer.gamma=0"], "optimizer.gamma", "in (0, 1]", "0.0"),
        (["optimizer.gamma=1.5"], "optimizer.gamma", "in (0, 1]", "1.5"),
        (["optimizer.warmup_epochs=-1"], "optimizer.warmup_epochs", ">= 0", "-1"),
        (["optimizer.milestones=[4, 2]"], "optimizer.milestones", "increasing", "(4, 2)"),
        (["train.epochs=0"], "train.epochs", ">= 1", "0"),
        (["train.batch_size=0"], "train.batch_size", ">= 1", "0"),
        (["train.val_every=0"], "train.val_every", ">= 1", "0"),
        (["train.val_robust_n=0"], "train.val_robust_n", ">= 1", "0"),
        (["train.val_robust_steps=-1"], "train.val_robust_steps", ">= 0", "-1"),
        (["train.steps_per_execution=0"], "train.steps_per_execution", ">= 1", "0"),
        (["train.jit_compile=always"], "train.jit_compile", 'true, false or "auto"', "'always'"),
        (
            ["train.precision=float16"],
            "train.precision",
            "one of float32, mixed_bfloat16, mixed_float16",
            "'float16'",
        ),
        (
            ["train.select=best"],
            "train.select",
            "one of last, best_val, best_test, rslad_pgd20",
            "'best'",
        ),
        (["train.select_n=0"], "train.select_n", ">= 1 or null", "0"),
        (["eval.n=0"], "eval.n", ">= 1", "0"),
        (["eval.batch_size=0"], "eval.batch_size", ">= 1", "0"),
        (["output.dir=''"], "output.dir", "a non-empty path", "''"),
        (
            ["distribute.strategy=tpu"],
            "distribute.strategy",
            "one of auto, none, mirrored, multi_worker",
            "'tpu'",
        ),
        (["distribute.logical_cpus=-1"], "distribute.logical_cpus", ">= 0", "-1"),
        (
            ["export.formats=[saved_model, onnx]"],
            "export.formats",
            "a list of saved_model, tflite_float, tflite_dynamic, tflite_int8",
            "['saved_model', 'onnx']",
        ),
        (
            ["tune.objective={clean_weight: true, robust_weight: 1}"],
            "tune.objective.clean_weight",
            "a number >= 0",
            "True",
        ),
        (
            ["tune.objective={robust_weight: -1}"],
            "tune.objective.robust_weight",
            "a number >= 0",
            "-1",
        ),
        (
            ["tune.objective={robust_weight: high}"],
            "tune.objective.robust_weight",
            "a number >= 0",
            "'high'",
        ),
        (
            ["tune.objective={clean_weight: 0, robust_weight: 0}"],
            "tune.objective",
            "weights that are not both 0",
            "{'clean_weight': 0, 'robust_weight': 0}",
        ),
        (
            ["tune.objective=val_acc"],
            "tune.objective",
            "one of val_robust_accuracy, val_clean_accuracy or {clean_weight: a, robust_weight: b}",
            "'val_acc'",
        ),
        (["tune.tuner=grid"], "tune.tuner", "one of random, bayesian, hyperband", "'grid'"),
        (["tune.max_trials=0"], "tune.max_trials", ">= 1", "0"),
        (["tune.epochs=0"], "tune.epochs", ">= 1 or null", "0"),
        (["tune.seed=-1"], "tune.seed", ">= 0", "-1"),
    ],
)
def test_a_value_past_its_bound_is_refused_naming_key_requirement_and_value(
    overrides, key, requirement, received
):
    message = refusal(overrides)
    assert f"`{key}` must be {requirement}" in message, message
    assert f"received {key}={received}" in message, message


def test_a_range_refusal_reads_as_one_sentence():
    assert refusal(["train.epochs=0"]) == "`train.epochs` must be >= 1; received train.epochs=0"


@pytest.mark.parametrize(
    "overrides", [["model.normalize_mean=[0.5]"], ["model.normalize_std=[0.5]"]]
)
def test_normalisation_needs_both_mean_and_std(overrides):
    message = refusal(overrides)
    assert message.startswith(
        "`model.normalize_mean` and `model.normalize_std` must be given together; received "
    )
    given = overrides[0].split("=")[0].split(".")[1]
    assert f"{given}=(0.5,)" in message, message


def test_checkpoint_choice_on_validation_without_a_validation_split_names_both_and_the_fix():
    message = refusal(["data.val_fraction=0"])  # train.select defaults to best_val
    assert message.startswith("`train.select`=best_val chooses the checkpoint on the validation")
    assert "`data.val_fraction`=0 leaves none" in message
    assert "set data.val_fraction > 0, or train.select=last" in message
    # The alternatives come from the rule table: the honest rules, then the leaky ones, named so.
    assert message.endswith(
        "train.select=last (or best_test / rslad_pgd20, the references' leaky test-set rules)"
    )


def test_an_unknown_objective_weight_is_named_with_the_known_ones():
    message = refusal(["tune.objective={clean_weight: 1, robust: 1}"])
    assert message == (
        "unknown key `tune.objective.robust`; known keys: clean_weight, robust_weight"
    )


def test_attack_names_are_read_lower_case_and_unknown_ones_named_with_the_known():
    assert check_attack_names([" PGD7 ", "", "Clean"]) == ["pgd7", "clean"]
    message = refusal(["eval.attacks=[clean, pgd]"])
    assert message.startswith("`eval.attacks` has an unknown attack 'pgd'; known: clean, fgsm")
    assert "pgd<K>" in message
    with pytest.raises(ConfigError) as caught:
        check_attack_names(["clean", "pgd0"], key="study.attacks")
    assert str(caught.value).startswith("`study.attacks` has an unknown attack 'pgd0'")
    message = refusal(["eval.attacks=[' ']"])
    assert message == "`eval.attacks` must name at least one attack; received [' ']"


def test_export_formats_are_read_stripped_and_an_unknown_one_is_named_with_the_known():
    assert check_export_formats([" saved_model", "", "tflite_int8"]) == [
        "saved_model",
        "tflite_int8",
    ]
    assert check_export_formats([]) == []
    with pytest.raises(ConfigError) as caught:
        check_export_formats(["onnx"], key="study.export")
    assert str(caught.value).startswith("`study.export` must be a list of saved_model, ")
