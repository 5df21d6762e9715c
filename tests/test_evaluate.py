"""evaluate: the attack suite on an undefended model, the CLI, its report, its refusals."""

import json

import keras
import numpy as np
import pytest

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
    import pathlib

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
