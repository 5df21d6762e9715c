"""evaluate: the attack suite on an undefended model, the CLI, its report, its refusals."""

import json
import pathlib

import keras
import numpy as np
import pytest
from subprocesses import run_command

from dgad_tf.evaluate import check_attack_names, main
from dgad_tf.robustness import evaluate_model

EPS = 8 / 255


@pytest.fixture(scope="module")
def undefended():
    """A small dense net trained for a moment on separable 8x8x3 data (for the CLI tests)."""
    keras.utils.set_random_seed(1)
    rng = np.random.default_rng(1)
    means = (0.5 + rng.normal(0, 0.05, size=(10, 8, 8, 3))).astype(np.float32)
    y = rng.integers(0, 10, size=600)
    x = np.clip(means[y] + rng.normal(0, 0.01, size=(600, 8, 8, 3)), 0, 1).astype(np.float32)
    model = keras.Sequential(
        [
            keras.Input((8, 8, 3)),
            keras.layers.Flatten(),
            keras.layers.Dense(64, activation="relu"),
            keras.layers.Dense(10),
        ]
    )
    model.compile(
        optimizer=keras.optimizers.Adam(1e-2),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
    )
    model.fit(x[:500], y[:500], epochs=20, batch_size=50, verbose=0)
    return model, x[500:], y[500:]


@pytest.fixture(scope="module")
def undefended_cifar():
    """A small CNN trained for a moment on real CIFAR-10: well above chance, not robust."""
    root = pathlib.Path(__file__).resolve().parents[1].parent / "shared" / "data" / "cifar10"
    if not (root / "train_20k.npz").exists():
        pytest.skip("../shared/data/cifar10 not present")
    keras.utils.set_random_seed(2)
    with np.load(root / "train_20k.npz") as data:
        x, y = data["x"][:3000].astype(np.float32) / 255, data["y"][:3000].astype(np.int64)
    model = keras.Sequential(
        [
            keras.Input((32, 32, 3)),
            keras.layers.Conv2D(16, 3, strides=2, activation="relu"),
            keras.layers.Conv2D(32, 3, strides=2, activation="relu"),
            keras.layers.Flatten(),
            keras.layers.Dense(10),
        ]
    )
    model.compile(
        optimizer=keras.optimizers.Adam(2e-3),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
    )
    model.fit(x[:2800], y[:2800], epochs=4, batch_size=100, verbose=0)
    return model, x[2800:], y[2800:]


def test_attacks_break_an_undefended_model(undefended_cifar):
    model, x, y = undefended_cifar
    report = evaluate_model(
        model,
        x,
        y,
        attacks=["clean", "fgsm", "pgd20", "autoattack_custom"],
        eps=EPS,
        batch_size=50,
        seed=0,
    )
    acc = {name: entry["robust_accuracy"] for name, entry in report["attacks"].items()}
    assert acc["clean"] > 0.3  # chance is 0.1
    assert acc["pgd20"] <= 0.05
    assert acc["autoattack_custom"] <= 0.05
    assert acc["fgsm"] >= acc["pgd20"]
    # AutoAttack's worst case is at least as strong as PGD-20, up to one point in 100.
    assert acc["autoattack_custom"] <= acc["pgd20"] + 0.01


def test_same_seed_same_report(undefended):
    model, x, y = undefended
    first = evaluate_model(
        model, x[:40], y[:40], attacks=["pgd5", "cw_inf"], eps=EPS / 4, batch_size=20, seed=3
    )
    second = evaluate_model(
        model, x[:40], y[:40], attacks=["pgd5", "cw_inf"], eps=EPS / 4, batch_size=20, seed=3
    )
    for name in ("pgd5", "cw_inf"):
        assert (
            first["attacks"][name]["robust_accuracy"] == second["attacks"][name]["robust_accuracy"]
        )


def test_eps_zero_changes_nothing(undefended):
    model, x, y = undefended
    report = evaluate_model(
        model, x[:50], y[:50], attacks=["clean", "fgsm", "pgd10"], eps=0.0, batch_size=25
    )
    accs = {e["robust_accuracy"] for e in report["attacks"].values()}
    assert accs == {report["clean_accuracy"]}


def test_attack_names_are_checked():
    assert check_attack_names(["Clean", "pgd7", "cw_l2"]) == ["clean", "pgd7", "cw_l2"]
    with pytest.raises(ValueError, match="unknown attack 'pgdx'"):
        check_attack_names(["pgdx"])


def test_cli_writes_the_json_report_for_a_keras_file(undefended, tmp_path, capsys):
    model, x, y = undefended
    path = tmp_path / "m.keras"
    model.save(path)
    data = tmp_path / "d.npz"
    np.savez(
        data,
        x_train=(x * 255).astype(np.uint8),
        y_train=y,
        x_test=(x * 255).astype(np.uint8),
        y_test=y,
    )
    out = tmp_path / "report.json"
    code = main(
        [
            "--model",
            str(path),
            "--data",
            str(data),
            "--n",
            "30",
            "--attacks",
            "clean,fgsm,pgd5",
            "--batch-size",
            "16",
            "--out",
            str(out),
        ]
    )
    assert code == 0
    report = json.loads(out.read_text())
    assert report["n"] == 30 and set(report["attacks"]) == {"clean", "fgsm", "pgd5"}
    assert len(report["model_sha256"]) == 64
    assert "pgd5" in capsys.readouterr().out


def test_cli_refuses_wrong_shape_and_bad_names(undefended, tmp_path, capsys):
    model, x, y = undefended
    path = tmp_path / "m.keras"
    model.save(path)
    assert main(["--model", str(path), "--data", "digits", "--n", "10"]) == 2
    assert "shape" in capsys.readouterr().err
    assert main(["--model", str(path), "--data", "digits", "--attacks", "pgd"]) == 2
    assert "unknown attack" in capsys.readouterr().err
    assert main(["--model", str(tmp_path / "none.keras"), "--data", "digits"]) == 2
    assert "none.keras" in capsys.readouterr().err


def test_probability_outputs_are_warned_about(undefended):
    model, x, y = undefended
    softmaxed = keras.Sequential([model, keras.layers.Softmax()])
    with pytest.warns(RuntimeWarning, match="probabilit"):
        evaluate_model(softmaxed, x[:20], y[:20], attacks=["clean"], eps=EPS, batch_size=20)


def test_pgd_accuracy_is_measured_on_the_adversarial_images():
    # A fixed random linear model, labelled by its own clean predictions (clean accuracy 1), so
    # evaluate attacks every point in one batch exactly as a direct pgd_ce call does.
    from dgad_tf import attacks

    rng = np.random.default_rng(5)
    model = keras.Sequential(
        [keras.Input((4, 4, 1)), keras.layers.Flatten(), keras.layers.Dense(5)]
    )
    model.layers[-1].set_weights(
        [rng.normal(0, 1, (16, 5)).astype(np.float32), np.zeros(5, np.float32)]
    )
    x = rng.uniform(0.2, 0.8, (40, 4, 4, 1)).astype(np.float32)
    y = np.argmax(model(x, training=False).numpy(), 1)
    eps = 0.05

    report = evaluate_model(model, x, y, attacks=["pgd5"], eps=eps, batch_size=64, seed=4)
    x_adv = attacks.pgd_ce(lambda xb: model(xb, training=False), x, y, eps=eps, steps=5, seed=4)
    expected = float(np.mean(np.argmax(model(x_adv, training=False).numpy(), 1) == y))
    assert report["clean_accuracy"] == 1.0
    assert 0.0 < expected < 1.0, "eps no longer informative"
    assert report["attacks"]["pgd5"]["robust_accuracy"] == pytest.approx(expected)


def test_cw_l2_accuracy_counts_every_point_and_a_clean_error_is_an_adversarial_error():
    import tensorflow as tf
    from test_attacks import _advertorch_cw_l2_linear

    rng = np.random.default_rng(3)
    n = 24
    x = rng.uniform(0.1, 0.9, size=(n, 2, 2, 1)).astype(np.float32)
    kernel = rng.normal(0, 1.0, size=(4, 3)).astype(np.float32)
    bias = rng.normal(0, 0.5, size=3).astype(np.float32)
    y = np.argmax(x.reshape(n, -1) @ kernel + bias, axis=1)
    y[::3] = (y[::3] + 1) % 3  # a third of the points are wrong before any attack

    def model_fn(images):
        return tf.reshape(tf.cast(images, tf.float32), [-1, 4]) @ kernel + bias

    report = evaluate_model(model_fn, x, y, attacks=["clean", "cw_l2"], batch_size=64)
    correct = np.flatnonzero(np.argmax(x.reshape(n, -1) @ kernel + bias, axis=1) == y)
    # The reference's attack on the clean-correct points (one batch here, as evaluate's).
    x_adv = _advertorch_cw_l2_linear(
        x[correct], y[correct], kernel.astype(np.float64), bias.astype(np.float64)
    )
    still_right = np.argmax(x_adv.reshape(len(correct), -1) @ kernel + bias, axis=1) == y[correct]
    assert report["n"] == n and report["clean_accuracy"] == pytest.approx(len(correct) / n)
    assert 0 < still_right.sum() < len(correct)  # the attack breaks some points, not all
    assert report["attacks"]["cw_l2"]["robust_accuracy"] == pytest.approx(still_right.sum() / n)


# --- any model: Keras, SavedModel directory, loaded SavedModel, callable --------------------

ANY_ATTACKS = ["clean", "fgsm", "pgd3"]


@pytest.fixture(scope="module")
def digits_models(digits, tmp_path_factory):
    """A dense net trained for a moment on the 8x8 digits, and two SavedModels of it.

    `dgad_tf_export`: dgad_tf's own signatures (`serving_default` uint8 0..255 -> probabilities
    and classes; `logits` float [0, 1] -> logits). `float_255`: one float32 signature taking
    0-255 pixels, returning its logits as its single output (as other exporters do).
    """
    import tensorflow as tf

    from dgad_tf.serving.savedmodel import save_serving_model

    keras.utils.set_random_seed(3)
    model = keras.Sequential(
        [keras.Input((8, 8, 1)), keras.layers.Flatten(), keras.layers.Dense(10)]
    )
    model.compile(
        keras.optimizers.Adam(1e-2), keras.losses.SparseCategoricalCrossentropy(from_logits=True)
    )
    model.fit(digits["train_x"] / 255.0, digits["train_y"], epochs=3, batch_size=64, verbose=0)
    root = tmp_path_factory.mktemp("savedmodels")
    save_serving_model(model, root / "dgad_tf_export", (8, 8, 1))

    class Float255(tf.Module):
        def __init__(self, net):
            super().__init__()
            self.net = net

        @tf.function(input_signature=[tf.TensorSpec([None, 8, 8, 1], tf.float32)])
        def serve(self, pixels):
            return {"scores": self.net(pixels / 255.0, training=False)}

    module = Float255(model)
    tf.saved_model.save(
        module, str(root / "float_255"), signatures={"serving_default": module.serve}
    )
    return model, root / "dgad_tf_export", root / "float_255"


def _accuracies(report):
    return {name: entry["robust_accuracy"] for name, entry in report["attacks"].items()}


def test_any_model_scores_as_evaluate_model_scores_the_keras_model(digits_models, digits):
    import tensorflow as tf

    from dgad_tf import evaluate_robustness

    model, export_dir, float_255 = digits_models
    x, y = digits["test_x"][:64], digits["test_y"][:64]
    kwargs = dict(eps=EPS, attacks=ANY_ATTACKS, batch_size=32)
    expected = _accuracies(evaluate_model(model, x, y, **kwargs))
    assert 0.0 < expected["pgd3"] < expected["clean"], "uninformative eps"
    same = {
        "Keras model": dict(model=model),
        "export dir, logits signature": dict(model=str(export_dir), signature="logits"),
        "loaded SavedModel": dict(model=tf.saved_model.load(str(export_dir)), signature="logits"),
        "float 0-255 signature": dict(model=float_255, input_scale=255),
        "callable": dict(model=lambda images: model(images, training=False)),
        "callable of 0-255": dict(model=lambda p: model(p / 255.0), input_scale=255),
    }
    for what, given in same.items():
        report = evaluate_robustness(given.pop("model"), x, y, **given, **kwargs)
        assert _accuracies(report) == expected, what
    # Float images in [0, 1] are the same images as their uint8 originals.
    assert _accuracies(evaluate_robustness(model, x / 255.0, y, **kwargs)) == expected


def test_a_uint8_signature_at_input_scale_255_scores_as_the_float_one(digits_models, digits):
    from dgad_tf import evaluate_robustness
    from dgad_tf.autoattack import AutoAttack

    export_dir = str(digits_models[1])
    x, y = digits["test_x"][:64], digits["test_y"][:64]
    uint8 = evaluate_robustness(export_dir, x, y, attacks=["clean"], input_scale=255)
    floats = evaluate_robustness(export_dir, x, y, attacks=["clean"], signature="logits")
    assert uint8["clean_accuracy"] == floats["clean_accuracy"] > 0.5
    # Square only queries the model, and at eps 8/255 its candidates lie on the uint8 grid.
    options = {"square": {"n_queries": 30}}
    runs = [
        AutoAttack(
            export_dir, eps=EPS, version="custom", attacks=["square"], attack_options=options, **how
        ).run_standard_evaluation(x, y, batch_size=32)
        for how in (dict(input_scale=255), dict(signature="logits"))
    ]
    np.testing.assert_array_equal(runs[0][0], runs[1][0])
    assert runs[0][1]["robust_accuracy"] == runs[1][1]["robust_accuracy"]
    assert runs[0][1]["robust_accuracy"] < uint8["clean_accuracy"], "uninformative"


@pytest.mark.parametrize(
    "given, message",
    [
        (
            dict(x=np.zeros((4, 8, 8), np.uint8)),
            "takes images of shape (8, 8, 1) but `x` has (8, 8)",
        ),
        (dict(x=np.full((4, 8, 8, 1), 255.0)), "received float64 values in [255.0, 255.0]"),
        (dict(x=np.zeros((4, 8, 8, 1), np.int32)), "received dtype int32"),
        (dict(y=[0, 1, 2, 10]), "label 10 but the model has 10 classes"),
        (dict(y=[0, 1, 2]), "4 images but 3 labels"),
        (dict(y=np.eye(10)[:4]), "one-hot"),
        (dict(model="nowhere/model"), "no model at nowhere/model"),
        (dict(model="EMPTY_DIR"), "is neither a SavedModel directory"),
        (dict(model=lambda images: images[:, 0, 0]), "returned shape (2, 1) for 2 image(s)"),
        (dict(model=3), "received int"),
        (dict(signature="logits"), "`signature` chooses a SavedModel's signature"),
        (dict(model="EXPORT"), "takes uint8 pixels (0..255); pass input_scale=255"),
        (dict(model="EXPORT", signature="nope"), "has no signature 'nope'"),
        (dict(model="EXPORT", input_scale=255, attacks=["fgsm"]), "no gradient flows, so fgsm"),
    ],
)
def test_what_does_not_fit_is_refused_naming_it(digits_models, tmp_path, given, message):
    from dgad_tf import evaluate_robustness

    kwargs = dict(
        model=digits_models[0],
        x=np.zeros((4, 8, 8, 1), np.uint8),
        y=[0, 1, 2, 3],
        attacks=["clean"],
    )
    kwargs.update(given)
    if kwargs["model"] == "EMPTY_DIR":
        kwargs["model"] = str(tmp_path)
    elif kwargs["model"] == "EXPORT":
        kwargs["model"] = str(digits_models[1])
    with pytest.raises((ValueError, FileNotFoundError, TypeError)) as error:
        evaluate_robustness(kwargs.pop("model"), kwargs.pop("x"), kwargs.pop("y"), **kwargs)
    assert message in str(error.value)


def test_cli_evaluates_a_savedmodel_and_refuses_a_path_that_is_none(
    digits_models, digits, tmp_path, capsys
):
    import sys

    from dgad_tf import evaluate_robustness

    model, export_dir, _ = digits_models
    x, y = digits["test_x"][:40], digits["test_y"][:40]
    np.savez(tmp_path / "test.npz", x=x, y=y)
    expected = evaluate_robustness(model, x, y, attacks=["clean"])["clean_accuracy"]
    proc = run_command(
        [
            sys.executable,
            "-m",
            "dgad_tf.evaluate",
            "--model",
            str(export_dir),
            "--input-scale",
            "255",
            "--data",
            str(tmp_path / "test.npz"),
            "--attacks",
            "clean",
        ],
        cwd=pathlib.Path(__file__).resolve().parents[1],
    )
    assert proc.returncode == 0, proc.stderr
    assert f"clean={expected:.4f}" in proc.stdout
    assert "signature 'serving_default', uint8 images" in proc.stderr

    empty = tmp_path / "empty"
    empty.mkdir()
    for path in (empty, tmp_path / "test.npz"):
        assert main(["--model", str(path), "--data", str(tmp_path / "test.npz")]) == 2
        err = capsys.readouterr().err
        assert str(path) in err and "SavedModel" in err
    code = main(["--model", str(export_dir), "--data", str(tmp_path / "test.npz")])
    assert code == 2 and "--input-scale 255" in capsys.readouterr().err


# --- pixel scales and probability outputs -------------------------------------------------------


def test_input_scale_255_applies_to_a_keras_model_too(digits_models, digits):
    from dgad_tf import evaluate_robustness

    model = digits_models[0]
    inputs = keras.Input((8, 8, 1))
    of_pixels = keras.Model(inputs, model(keras.ops.divide(inputs, 255.0)))  # takes 0-255
    x, y = digits["test_x"][:64], digits["test_y"][:64]
    kwargs = dict(eps=EPS, attacks=ANY_ATTACKS, batch_size=32)
    expected = _accuracies(evaluate_model(model, x, y, **kwargs))
    assert 0.0 < expected["pgd3"] < expected["clean"], "uninformative eps"
    assert _accuracies(evaluate_robustness(of_pixels, x, y, input_scale=255, **kwargs)) == expected


@pytest.fixture(scope="module")
def probabilities_only(digits_models, tmp_path_factory):
    """A SavedModel whose one float [0, 1] signature returns only `probabilities`."""
    import tensorflow as tf

    model = digits_models[0]

    class ProbabilitiesOnly(tf.Module):
        def __init__(self, net):
            super().__init__()
            self.net = net

        @tf.function(input_signature=[tf.TensorSpec([None, 8, 8, 1], tf.float32)])
        def serve(self, images):
            return {"probabilities": tf.nn.softmax(self.net(images, training=False), -1)}

    module = ProbabilitiesOnly(model)
    path = tmp_path_factory.mktemp("probabilities") / "model"
    tf.saved_model.save(module, str(path), signatures={"serving_default": module.serve})
    return path


def test_a_probabilities_signature_is_attacked_through_its_log_probabilities(
    digits_models, probabilities_only, digits
):
    """log(softmax) is the Keras logits' log_softmax, so no attack loss tells them apart."""
    import warnings

    import tensorflow as tf

    from dgad_tf import evaluate_robustness
    from dgad_tf.logits import logits_function

    model, export_dir, _ = digits_models
    x, y = digits["test_x"][:64], digits["test_y"][:64]
    images = x.astype(np.float32) / 255.0
    expected = tf.nn.log_softmax(model(images, training=False), -1).numpy()
    given = {
        # dgad_tf's serving_default: uint8 in, probabilities and classes out.
        "serving_default": (str(export_dir), dict(input_scale=255), ["clean"]),
        "probabilities only": (str(probabilities_only), {}, ANY_ATTACKS),
    }
    for what, (path, how, attacks) in given.items():
        log_probabilities = np.asarray(logits_function(path, **how)(images))
        np.testing.assert_allclose(log_probabilities, expected, atol=2e-5, err_msg=what)
        with warnings.catch_warnings():
            warnings.simplefilter("error", RuntimeWarning)  # no "looks like probabilities"
            report = evaluate_robustness(path, x, y, attacks=attacks, eps=EPS, **how)
        assert report["clean_accuracy"] == np.mean(np.argmax(expected, 1) == y), what


def test_a_uint8_signature_is_fed_rounded_pixels_not_truncated(tmp_path):
    """A float image one float32 step below a grey level, or 0.6/255 above one, is that level
    (resp. the next) on the uint8 grid: `x * 255` is rounded, as `uint8(round(...))` would be."""
    import tensorflow as tf

    from dgad_tf import evaluate_robustness
    from dgad_tf.logits import logits_function

    class Parity(tf.Module):
        """Logits of class `pixel % 2` of the first pixel it is fed."""

        @tf.function(input_signature=[tf.TensorSpec([None, 2, 2, 1], tf.uint8)])
        def serve(self, pixels):
            value = tf.cast(pixels[:, 0, 0, 0], tf.int32)
            return {"logits": 10.0 * tf.one_hot(value % 2, 2)}

    module = Parity()
    tf.saved_model.save(module, str(tmp_path), signatures={"serving_default": module.serve})
    levels = np.arange(1, 255, dtype=np.float32)
    below = np.nextafter(levels / np.float32(255), np.float32(0))  # one float32 step below
    above = ((levels + 0.6) / 255).astype(np.float32)  # eps = 0.6/255 added to a grey level
    first_pixel = np.concatenate([below, above])
    x = np.repeat(first_pixel[:, None, None, None], 4, axis=1).reshape(-1, 2, 2, 1)
    rounded = np.concatenate([levels, levels + 1])
    scaled = x[:, 0, 0, 0] * np.float32(255)
    assert np.sum(np.floor(scaled) != rounded) > 100, "the images no longer tell round from floor"

    fed = logits_function(str(tmp_path), input_scale=255)
    np.testing.assert_array_equal(np.argmax(fed(x), 1), rounded % 2)
    report = evaluate_robustness(str(tmp_path), x, rounded % 2, attacks=["clean"], input_scale=255)
    assert report["clean_accuracy"] == 1.0


def test_a_point_wrong_when_clean_is_never_counted_robust():
    """Even when the attack's image of it is classified right: here the model's gradient is
    reversed, so the attacks descend the loss and move clean errors over to the right class."""
    import tensorflow as tf

    from dgad_tf import evaluate_robustness
    from dgad_tf.robustness import adversarial_images

    rng = np.random.default_rng(8)
    kernel = tf.constant(rng.normal(0, 1, (4, 2)).astype(np.float32))

    @tf.custom_gradient
    def reversed_gradient(z):
        return tf.identity(z), lambda upstream: -upstream

    def model_fn(images):
        flat = reversed_gradient(tf.reshape(tf.cast(images, tf.float32), [-1, 4]))
        return (flat - 0.5) @ kernel  # the class boundary runs through the images

    x = rng.uniform(0.3, 0.7, (64, 2, 2, 1)).astype(np.float32)
    predicted = np.argmax(model_fn(x).numpy(), 1)
    y = np.where(np.arange(64) % 2 == 0, predicted, 1 - predicted)  # half wrong when clean
    report = evaluate_robustness(model_fn, x, y, attacks=["clean", "fgsm", "pgd5"], eps=0.3)
    assert report["clean_accuracy"] == 0.5
    for name in ("fgsm", "pgd5"):
        x_adv = adversarial_images(model_fn, x, y, name, eps=0.3)
        right_after = np.argmax(model_fn(x_adv).numpy(), 1) == y
        assert right_after[y != predicted].sum() > 10, f"{name} leaves clean errors wrong"
        robust = report["attacks"][name]["robust_accuracy"]
        assert robust <= report["clean_accuracy"], name
        # FGSM has no random start, so each point's image is the same attacked alone or not.
        if name == "fgsm":
            assert robust == np.mean(right_after & (y == predicted))
