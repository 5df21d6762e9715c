"""Tests for dgad_tf.attacks on tiny Keras models and synthetic data."""

import functools

import keras
import numpy as np
import pytest
import tensorflow as tf

from dgad_tf import attacks

# Compared with an independent reference: CI also runs these with TF_ENABLE_ONEDNN_OPTS=0.
pytestmark = pytest.mark.parity

EPS_TOL = 1e-6


def dense_model(num_classes=5, input_shape=(4, 4, 3), seed=0):
    keras.utils.set_random_seed(seed)
    return keras.Sequential(
        [
            keras.Input(input_shape),
            keras.layers.Flatten(),
            keras.layers.Dense(16, activation="relu"),
            keras.layers.Dense(num_classes),
        ]
    )


def inference(model):
    return lambda x: model(x, training=False)


def image_batch(seed=0, n=8, shape=(4, 4, 3)):
    """Random pixels with exact 0s and 1s planted, to exercise the [0, 1] clip."""
    x = np.random.default_rng(seed).random((n,) + shape).astype(np.float32)
    x[:, 0] = 0.0
    x[:, 1] = 1.0
    return x


def labels_for(n, num_classes=5, seed=0):
    return np.random.default_rng(seed + 100).integers(0, num_classes, n).astype(np.int32)


def assert_in_ball_and_box(x_adv, x, eps):
    x_adv = np.asarray(x_adv)
    assert np.max(np.abs(x_adv - x)) <= eps + EPS_TOL
    assert x_adv.min() >= 0.0 and x_adv.max() <= 1.0


@functools.lru_cache(maxsize=1)
def trained_problem():
    """A small ReLU network trained briefly (undefended) on 3 radial classes in [0, 1]^8."""
    rng = np.random.default_rng(0)
    x = rng.random((400, 8)).astype(np.float32)
    radius = np.sqrt(((x[:, :2] - 0.5) ** 2).sum(axis=1))
    y = np.digitize(radius, [0.2, 0.35]).astype(np.int32)
    keras.utils.set_random_seed(1)
    model = keras.Sequential(
        [keras.Input((8,)), keras.layers.Dense(32, activation="relu"), keras.layers.Dense(3)]
    )
    optimizer = keras.optimizers.Adam(0.02)

    @tf.function
    def train_step():
        with tf.GradientTape() as tape:
            logits = model(x, training=True)
            loss = tf.reduce_mean(tf.nn.sparse_softmax_cross_entropy_with_logits(y, logits))
        optimizer.apply(tape.gradient(loss, model.trainable_variables), model.trainable_variables)

    for _ in range(400):
        train_step()
    return model, x, y


# ----------------------------------------------------------------------------- pgd core
@pytest.mark.parametrize("init", ["uniform", "gaussian", "none"])
def test_pgd_stays_in_eps_ball_and_pixel_range(init):
    model = dense_model()
    x, y = image_batch(), labels_for(8)
    x_adv = attacks.pgd(
        x,
        attacks.ce_objective(inference(model), y),
        eps=0.3,
        step_size=0.2,
        steps=5,
        init=init,
        init_std=0.5,
        seed=0,
    )
    assert_in_ball_and_box(x_adv, x, 0.3)


@pytest.mark.parametrize("init", ["uniform", "gaussian"])
def test_pgd_random_start_is_clipped_to_ball_and_box(init):
    x = image_batch()
    start = attacks.pgd(
        x,
        lambda z: tf.zeros([8]),
        eps=0.05,
        step_size=0.0,
        steps=0,
        init=init,
        init_std=0.5,
        seed=1,
    ).numpy()
    assert_in_ball_and_box(start, x, 0.05)
    assert np.any(start != x)


@pytest.mark.parametrize("init", ["uniform", "gaussian", "none"])
def test_pgd_eps_zero_returns_x_exactly(init):
    model = dense_model()
    x, y = image_batch(), labels_for(8)
    x_adv = attacks.pgd(
        x, attacks.ce_objective(inference(model), y), eps=0.0, step_size=0.1, steps=3, init=init
    )
    np.testing.assert_array_equal(x_adv.numpy(), x)


def test_pgd_steps_zero_without_init_returns_x():
    x = image_batch()
    out = attacks.pgd(x, lambda z: tf.zeros([8]), eps=0.1, step_size=0.1, steps=0, init="none")
    np.testing.assert_array_equal(out.numpy(), x)


def test_pgd_increases_the_objective():
    model = dense_model()
    x, y = image_batch(), labels_for(8)
    objective = attacks.ce_objective(inference(model), y)
    x_adv = attacks.pgd(x, objective, eps=0.1, step_size=0.02, steps=10, init="none")
    before = objective(tf.constant(x)).numpy()
    after = objective(x_adv).numpy()
    assert after.sum() > before.sum()
    assert np.all(after >= before - 1e-6)


def test_pgd_output_carries_no_gradient():
    model = dense_model()
    x = tf.Variable(image_batch())
    with tf.GradientTape() as tape:
        x_adv = attacks.pgd(
            x,
            attacks.ce_objective(inference(model), labels_for(8)),
            eps=0.1,
            step_size=0.05,
            steps=2,
            init="none",
        )
        total = tf.reduce_sum(x_adv)
    assert tape.gradient(total, x) is None


def test_pgd_same_seed_same_result_different_seed_different_result():
    model = dense_model()
    x, y = image_batch(), labels_for(8)
    objective = attacks.ce_objective(inference(model), y)
    run = functools.partial(attacks.pgd, x, objective, eps=0.1, step_size=0.01, steps=3)
    np.testing.assert_array_equal(run(seed=7).numpy(), run(seed=7).numpy())
    assert np.any(run(seed=7).numpy() != run(seed=8).numpy())
    np.testing.assert_array_equal(
        run(init="gaussian", seed=7).numpy(), run(init="gaussian", seed=7).numpy()
    )


def test_pgd_leaves_batch_norm_moving_statistics_unchanged():
    keras.utils.set_random_seed(0)
    model = keras.Sequential(
        [
            keras.Input((4, 4, 3)),
            keras.layers.Conv2D(4, 3, padding="same"),
            keras.layers.BatchNormalization(),
            keras.layers.Flatten(),
            keras.layers.Dense(3),
        ]
    )
    bn = model.layers[1]
    before = [v.numpy().copy() for v in (bn.moving_mean, bn.moving_variance)]
    x, y = image_batch(), labels_for(8, num_classes=3)
    attacks.pgd(x, attacks.ce_objective(inference(model), y), eps=0.1, step_size=0.02, steps=3)
    for var, old in zip((bn.moving_mean, bn.moving_variance), before):
        np.testing.assert_array_equal(var.numpy(), old)
    # The check can fail: a training-mode call does move the statistics.
    model(x, training=True)
    assert np.any(bn.moving_mean.numpy() != before[0])


def test_pgd_with_kl_objective_runs_under_jit_compile_and_matches_eager():
    teacher, student = dense_model(seed=1), dense_model(seed=2)
    x = image_batch()

    def attack(inputs):
        objective = attacks.kl_objective(inference(teacher), inference(student))
        return attacks.pgd(inputs, objective, eps=8 / 255, step_size=2 / 255, steps=4, init="none")

    compiled = tf.function(attack, jit_compile=True)(tf.constant(x)).numpy()
    assert_in_ball_and_box(compiled, x, 8 / 255)
    np.testing.assert_allclose(compiled, attack(tf.constant(x)).numpy(), atol=1e-6)
    assert np.any(compiled != x)


def test_pgd_gaussian_start_under_jit_compile_stays_in_ball():
    student = dense_model()
    x = image_batch()
    fixed = tf.constant(np.random.default_rng(3).normal(size=(8, 5)).astype(np.float32))

    @tf.function(jit_compile=True)
    def attack(inputs):
        objective = attacks.kl_to_fixed_objective(fixed, inference(student))
        return attacks.pgd(inputs, objective, eps=0.05, step_size=0.01, steps=3, init="gaussian")

    assert_in_ball_and_box(attack(tf.constant(x)), x, 0.05)


def test_kl_objectives_are_zero_when_models_agree():
    model = dense_model()
    x = tf.constant(image_batch())
    np.testing.assert_allclose(
        attacks.kl_objective(inference(model), inference(model))(x), 0.0, atol=1e-6
    )
    fixed = model(x, training=False)
    np.testing.assert_allclose(
        attacks.kl_to_fixed_objective(fixed, inference(model))(x), 0.0, atol=1e-6
    )


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(eps=8, step_size=0.1, steps=1), "eps=8"),
        (dict(eps=-0.1, step_size=0.1, steps=1), "eps=-0.1"),
        (dict(eps=0.1, step_size=-0.5, steps=1), "step_size=-0.5"),
        (dict(eps=0.1, step_size=0.1, steps=-1), "steps=-1"),
        (dict(eps=0.1, step_size=0.1, steps=1, init="normal"), "init='normal'"),
    ],
)
def test_pgd_rejects_bad_arguments(kwargs, message):
    with pytest.raises(ValueError, match=message):
        attacks.pgd(image_batch(), lambda z: tf.zeros([8]), **kwargs)


# ----------------------------------------------------------------------------- CW margin
@pytest.mark.parametrize("confidence", [0.0, 1.5])
def test_cw_margin_loss_matches_numpy(confidence):
    rng = np.random.default_rng(4)
    logits = rng.normal(0, 2, (12, 6)).astype(np.float32)
    y = rng.integers(0, 6, 12)
    expected = []
    for i in range(12):
        largest_other = max(logits[i, j] for j in range(6) if j != y[i])
        expected.append(min(largest_other - logits[i, y[i]], confidence))
    np.testing.assert_allclose(
        attacks.cw_margin_loss(logits, y, confidence).numpy(), expected, atol=1e-6
    )


# ----------------------------------------------------------------------------- evaluation attacks
def accuracy(model_fn, x, y, attack=None):
    """Accuracy of `model_fn` on x, or on `attack(model_fn, x, y)` when one is given."""
    if attack is not None:
        x = attack(model_fn, tf.constant(x), tf.constant(y))
    return float(np.mean(np.argmax(model_fn(x).numpy(), axis=-1) == y))


def test_fgsm_is_no_stronger_than_pgd_on_trained_model():
    model, x, y = trained_problem()
    model_fn = inference(model)
    eps = 0.05
    clean = accuracy(model_fn, x, y)
    fgsm_acc = accuracy(model_fn, x, y, functools.partial(attacks.fgsm, eps=eps))
    pgd_acc = accuracy(
        model_fn, x, y, functools.partial(attacks.pgd_ce, eps=eps, steps=20, restarts=5, seed=0)
    )
    assert clean > 0.95
    assert pgd_acc <= fgsm_acc < clean


def test_pgd_from_x_reaches_higher_loss_than_fgsm():
    model, x, y = trained_problem()
    objective = attacks.ce_objective(inference(model), y)
    x_fgsm = attacks.fgsm(inference(model), x, y, eps=0.05)
    x_pgd = attacks.pgd(x, objective, eps=0.05, step_size=0.0125, steps=20, init="none")
    assert objective(x_pgd).numpy().mean() > objective(x_fgsm).numpy().mean()


def test_fgsm_moves_every_free_pixel_by_eps():
    model, x, y = trained_problem()
    x_adv = attacks.fgsm(inference(model), x[:20], y[:20], eps=0.05).numpy()
    moved = np.abs(x_adv - x[:20])
    interior = (x[:20] > 0.05) & (x[:20] < 0.95)
    np.testing.assert_allclose(moved[interior], 0.05, atol=1e-6)


def test_pgd_ce_restarts_keep_first_adversarial():
    model, x, y = trained_problem()
    model_fn = inference(model)
    eps = 0.04
    single = attacks.pgd_ce(model_fn, x, y, eps=eps, steps=5, seed=3).numpy()
    multi = attacks.pgd_ce(model_fn, x, y, eps=eps, steps=5, restarts=3, seed=3).numpy()
    assert_in_ball_and_box(multi, x, eps)
    broken_once = np.argmax(model_fn(single).numpy(), 1) != y
    broken_multi = np.argmax(model_fn(multi).numpy(), 1) != y
    assert broken_once.sum() > 0
    np.testing.assert_array_equal(multi[broken_once], single[broken_once])
    assert np.all(broken_multi[broken_once])
    assert broken_multi.sum() >= broken_once.sum()


def test_pgd_ce_rejects_zero_restarts():
    model, x, y = trained_problem()
    with pytest.raises(ValueError, match="restarts=0"):
        attacks.pgd_ce(inference(model), x[:4], y[:4], eps=0.1, restarts=0)


def test_cw_inf_reduces_accuracy_and_stays_in_ball():
    model, x, y = trained_problem()
    model_fn = inference(model)
    x_adv = attacks.cw_inf(model_fn, x, y, eps=0.05, seed=0)
    assert_in_ball_and_box(x_adv, x, 0.05)
    clean = accuracy(model_fn, x, y)
    assert accuracy(model_fn, x_adv, y) < clean - 0.1


def test_cw_l2_finds_adversarials_inside_the_box_on_undefended_model():
    model, x, y = trained_problem()
    model_fn = inference(model)
    x, y = x[:64], y[:64]
    attack = tf.function(
        lambda a, b: attacks.cw_l2(model_fn, a, b, c=10.0, confidence=0.0, steps=200, lr=0.05)
    )
    x_adv = attack(tf.constant(x), tf.constant(y)).numpy()
    assert x_adv.min() >= 0.0 and x_adv.max() <= 1.0
    correct = np.argmax(model_fn(x).numpy(), 1) == y
    fooled = np.argmax(model_fn(x_adv).numpy(), 1) != y
    assert fooled[correct].mean() > 0.8
    # Points it could not break come back unchanged.
    np.testing.assert_array_equal(x_adv[~fooled], x[~fooled])


def test_cw_l2_traces_for_a_batch_of_one():
    # evaluate's last batch of clean-correct points can hold one image: a traced graph with a
    # static batch of 1 must keep its loop state's shapes.
    model, x, y = trained_problem()
    attack = tf.function(lambda a, b: attacks.cw_l2(inference(model), a, b, steps=5))
    x_adv = attack(tf.constant(x[:1]), tf.constant(y[:1])).numpy()
    assert x_adv.shape == x[:1].shape and np.isfinite(x_adv).all()


def test_cw_l2_without_steps_returns_the_original():
    model, x, y = trained_problem()
    np.testing.assert_array_equal(
        attacks.cw_l2(inference(model), x[:5], y[:5], steps=0).numpy(), x[:5]
    )


def test_cw_l2_rejects_bad_arguments():
    model, x, y = trained_problem()
    with pytest.raises(ValueError, match="lr=0"):
        attacks.cw_l2(inference(model), x[:2], y[:2], lr=0)


def _advertorch_cw_l2_linear(x, y, kernel, bias, *, c=0.1, confidence=0.01, steps=1000, lr=0.01):
    """advertorch's CarliniWagnerL2Attack as the DGAD reference calls it (one binary-search step,
    initial_const=c, abort_early=True), for logits = flatten(x) @ kernel + bias, in NumPy with
    hand-derived gradients. Distances are measured, as advertorch does, from x passed through
    arctanh and back."""
    flat = x.reshape(len(x), -1).astype(np.float64)
    onehot = np.eye(kernel.shape[1])[y]
    x_atanh = np.arctanh((np.clip(flat, 0, 1) * 2 - 1) * (1 - 1e-6))
    x_rescaled = (np.tanh(x_atanh) + 1) / 2
    delta, m, v = np.zeros_like(flat), np.zeros_like(flat), np.zeros_like(flat)
    best_l2 = np.full(len(x), 1e10)
    best = flat.copy()
    previous_loss = 1e6
    check_every = steps // 10 or 1
    for i in range(steps):
        adv = (np.tanh(x_atanh + delta) + 1) / 2
        logits = adv @ kernel + bias
        real = logits[np.arange(len(x)), y]
        other_index = np.argmax(np.where(onehot > 0, -np.inf, logits), axis=1)
        other = logits[np.arange(len(x)), other_index]
        l2 = np.sum((adv - x_rescaled) ** 2, axis=1)
        margin = np.maximum(real - other + confidence, 0)
        loss = l2.sum() + c * margin.sum()
        grad_adv = 2 * (adv - x_rescaled) + c * (margin > 0)[:, None] * (
            kernel[:, y].T - kernel[:, other_index].T
        )
        grad = grad_adv * (1 - np.tanh(x_atanh + delta) ** 2) / 2
        # advertorch steps the optimiser before its abort check and its best-so-far update.
        t = i + 1
        m = 0.9 * m + 0.1 * grad
        v = 0.999 * v + 0.001 * grad**2
        delta = delta - lr * (m / (1 - 0.9**t)) / (np.sqrt(v / (1 - 0.999**t)) + 1e-8)
        if i % check_every == 0:
            if loss > previous_loss * (1 - 1e-6):
                break
            previous_loss = loss
        successful = np.argmax(logits + confidence * onehot, axis=1) != y
        improved = successful & (l2 < best_l2)
        best_l2[improved] = l2[improved]
        best[improved] = adv[improved]
    return best.reshape(x.shape)


def test_cw_l2_defaults_follow_advertorch_as_the_dgad_reference_calls_it():
    rng = np.random.default_rng(3)
    x = rng.uniform(0.1, 0.9, size=(12, 2, 2, 1)).astype(np.float32)
    kernel = rng.normal(0, 3.0, size=(4, 3)).astype(np.float32)
    bias = rng.normal(0, 0.5, size=3).astype(np.float32)
    y = np.argmax(x.reshape(12, -1) @ kernel + bias, axis=1)  # every point starts correct
    y[:3] = (y[:3] + 1) % 3  # ... except three, which are already wrong
    model_fn = lambda a: tf.reshape(a, [-1, 4]) @ kernel + bias  # noqa: E731
    expected = _advertorch_cw_l2_linear(x, y, kernel.astype(np.float64), bias.astype(np.float64))
    got = tf.function(lambda a, b: attacks.cw_l2(model_fn, a, b))(
        tf.constant(x), tf.constant(y)
    ).numpy()
    broken = np.any(expected != x, axis=(1, 2, 3))
    assert 0 < broken.sum() < len(x), broken  # both outcomes are exercised
    np.testing.assert_allclose(got, expected, atol=1e-5)
    # Unbroken points come back exactly; broken ones are misclassified.
    np.testing.assert_array_equal(got[~broken], x[~broken])
    assert np.all(np.argmax(model_fn(got).numpy(), 1)[broken] != y[broken])
