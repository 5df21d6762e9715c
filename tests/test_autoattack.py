"""Tests of dgad_tf.autoattack: losses, schedules, the FAB projection, each attack, the runner.

The attacks are checked on a small dense network trained for a moment on synthetic 10-class
8x8x1 data (undefended, so small perturbations fool it), at reduced iteration budgets where
the behaviour under test does not depend on the budget.
"""

import fractions
import math
import warnings

import keras
import numpy as np
import pytest
import tensorflow as tf
from scipy.optimize import linprog

from dgad_tf.autoattack import (
    AutoAttack,
    apgd,
    apgd_checkpoints,
    apgd_targeted,
    dlr_loss,
    dlr_targeted_loss,
    fab_targeted,
    project_linf_hyperplane_box,
    run_autoattack,
    square,
    square_p_selection,
)
from dgad_tf.autoattack.apgd import _build_apgd_run
from dgad_tf.autoattack.square import _build_square_run

NUM_CLASSES = 10
EPS = 0.1
# Small budgets for the tests that do not measure attack strength.
QUICK = {
    "apgd-ce": {"n_iter": 10},
    "apgd-t": {"n_iter": 10, "n_target_classes": 3},
    "fab-t": {"n_iter": 10, "n_target_classes": 3},
    "square": {"n_queries": 200},
}


def _synthetic_data(n, seed):
    rng = np.random.default_rng(seed)
    templates = np.random.default_rng(123).uniform(0.3, 0.7, (NUM_CLASSES, 8, 8, 1))
    labels = rng.integers(0, NUM_CLASSES, n)
    x = np.clip(templates[labels] + rng.normal(0.0, 0.1, (n, 8, 8, 1)), 0.0, 1.0)
    return x.astype(np.float32), labels.astype(np.int32)


@pytest.fixture(scope="module")
def model_fn():
    """An undefended dense classifier (clean accuracy ~1) on the synthetic data."""
    keras.utils.set_random_seed(1)
    x, labels = _synthetic_data(2000, seed=1)
    model = keras.Sequential(
        [
            keras.Input((8, 8, 1)),
            keras.layers.Flatten(),
            keras.layers.Dense(32, activation="relu"),
            keras.layers.Dense(NUM_CLASSES),
        ]
    )
    model.compile(
        keras.optimizers.Adam(0.01), keras.losses.SparseCategoricalCrossentropy(from_logits=True)
    )
    model.fit(x, labels, epochs=5, batch_size=100, verbose=0)
    return lambda inputs: model(inputs, training=False)


@pytest.fixture(scope="module")
def batch(model_fn):
    """40 test points, correctly classified, some pixels pinned at exactly 0 and 1."""
    x, labels = _synthetic_data(200, seed=2)
    x[:, 0, :4] = 0.0
    x[:, 1, :4] = 1.0
    correct = np.argmax(model_fn(x).numpy(), 1) == labels
    return x[correct][:40], labels[correct][:40]


def _accuracy(model_fn, x, labels):
    return float(np.mean(np.argmax(np.asarray(model_fn(x)), 1) == labels))


def _assert_in_ball(x_adv, x, eps):
    x_adv = np.asarray(x_adv)
    assert x_adv.shape == x.shape
    assert np.abs(x_adv - x).max() <= eps + 1e-6
    assert x_adv.min() >= 0.0 and x_adv.max() <= 1.0


# ------------------------------------------------------------------------------ losses


def _numpy_dlr(logits, labels):
    ordered = np.sort(logits, axis=1)[:, ::-1]
    rows = np.arange(len(labels))
    true = logits[rows, labels]
    others = logits.copy()
    others[rows, labels] = -np.inf
    return -(true - others.max(1)) / (ordered[:, 0] - ordered[:, 2] + 1e-12)


def test_dlr_loss_matches_numpy():
    rng = np.random.default_rng(0)
    logits = rng.normal(0, 3, (16, 10)).astype(np.float32)
    labels = rng.integers(0, 10, 16)
    # Make half the rows correctly classified so both branches of the max are used.
    logits[:8][np.arange(8), labels[:8]] += 10.0
    np.testing.assert_allclose(
        dlr_loss(logits, labels).numpy(), _numpy_dlr(logits, labels), rtol=1e-5
    )


def test_dlr_loss_hand_value():
    # -(z_y - max other) / (z_1 - z_3) = -(1 - 3) / (3 - 0)
    np.testing.assert_allclose(
        dlr_loss([[1.0, 3.0, 0.0, -1.0]], [0]).numpy(), [2.0 / 3.0], rtol=1e-6
    )


def test_dlr_targeted_loss_matches_numpy():
    rng = np.random.default_rng(1)
    logits = rng.normal(0, 3, (16, 10)).astype(np.float32)
    labels = rng.integers(0, 10, 16)
    targets = (labels + rng.integers(1, 10, 16)) % 10
    ordered = np.sort(logits, axis=1)[:, ::-1]
    rows = np.arange(16)
    expected = -(logits[rows, labels] - logits[rows, targets]) / (
        ordered[:, 0] - 0.5 * (ordered[:, 2] + ordered[:, 3]) + 1e-12
    )
    np.testing.assert_allclose(
        dlr_targeted_loss(logits, labels, targets).numpy(), expected, rtol=1e-5
    )


# ------------------------------------------------------------------------------ schedules


def _paper_checkpoints(n_iter):
    """w_j = ceil(p_j N), p_0 = 0, p_1 = 0.22, p_{j+1} = p_j + max(p_j - p_{j-1} - 0.03, 0.06)."""
    p_prev, p = fractions.Fraction(0), fractions.Fraction(22, 100)
    result = []
    while math.ceil(p * n_iter) < n_iter:
        result.append(math.ceil(p * n_iter))
        p_prev, p = p, p + max(p - p_prev - fractions.Fraction(3, 100), fractions.Fraction(6, 100))
    return sorted(set(result))


@pytest.mark.parametrize("n_iter", [10, 37, 50, 100, 250, 1000])
def test_apgd_checkpoints_follow_the_paper(n_iter):
    assert apgd_checkpoints(n_iter) == _paper_checkpoints(n_iter)


def test_apgd_checkpoints_for_100_iterations():
    # p_j = 0.22, 0.41, 0.57, 0.70, 0.80, 0.87, 0.93, 0.99 (1.05 is past the end).
    assert apgd_checkpoints(100) == [22, 41, 57, 70, 80, 87, 93, 99]
    assert apgd_checkpoints(50)[:3] == [11, 21, 29]  # ceil(20.5) = 21, ceil(28.5) = 29


def test_square_p_schedule_halves_after_reference_thresholds():
    values = {
        i: square_p_selection(i, 10000, p_init=0.8)
        for i in (0, 10, 11, 50, 51, 200, 201, 501, 1001, 2001, 4001, 6001, 8001, 9999)
    }
    assert values[0] == values[10] == 0.8
    assert values[11] == values[50] == 0.4
    assert values[51] == values[200] == 0.2
    assert [values[i] for i in (201, 501, 1001, 2001, 4001, 6001, 8001)] == [
        0.8 / 2**k for k in range(3, 10)
    ]
    assert values[9999] == 0.8 / 512
    # Rescaled to 5000 queries, query 6 sits at 12 of 10000: already halved once.
    assert square_p_selection(6, 5000, rescale_schedule=True) == 0.4
    assert square_p_selection(6, 5000, rescale_schedule=False) == 0.8


# ------------------------------------------------------------------------------ FAB projection


def _linprog_min_linf(t, w, b):
    """min lambda s.t. w.(t + d) = b, |d_i| <= lambda, 0 <= t + d <= 1; None if infeasible."""
    dim = len(t)
    cost = np.r_[np.zeros(dim), 1.0]
    a_ub = np.vstack([np.c_[np.eye(dim), -np.ones(dim)], np.c_[-np.eye(dim), -np.ones(dim)]])
    result = linprog(
        cost,
        A_ub=a_ub,
        b_ub=np.zeros(2 * dim),
        A_eq=np.r_[w, 0.0][None],
        b_eq=[b - w @ t],
        bounds=[(-ti, 1 - ti) for ti in t] + [(0, None)],
    )
    return result.fun if result.status == 0 else None


def _random_problems(seed, n):
    rng = np.random.default_rng(seed)
    for _ in range(n):
        dim = int(rng.integers(1, 7))
        t = rng.uniform(0, 1, dim)
        t[rng.uniform(size=dim) < 0.2] = rng.integers(0, 2)  # points on the box faces
        w = rng.normal(size=dim)
        w[rng.uniform(size=dim) < 0.15] = 0.0
        yield t, w, w @ t + 0.7 * rng.normal()


def test_linf_projection_matches_linprog_optimum():
    n_checked = 0
    for t, w, b in _random_problems(seed=0, n=200):
        optimum = _linprog_min_linf(t, w, b)
        if optimum is None:
            continue
        n_checked += 1
        d = project_linf_hyperplane_box(t[None], w[None], np.array([b]))[0].numpy()
        assert abs(np.abs(d).max(initial=0.0) - optimum) < 1e-5
        assert abs(w @ (t + d) - b) < 1e-4
        assert (t + d).min() >= -1e-6 and (t + d).max() <= 1 + 1e-6
    assert n_checked > 100


def test_linf_projection_goes_to_the_nearest_corner_when_infeasible():
    n_checked = 0
    for t, w, b in _random_problems(seed=1, n=200):
        if _linprog_min_linf(t, w, b) is not None:
            continue
        n_checked += 1
        d = project_linf_hyperplane_box(t[None], w[None], np.array([b]))[0].numpy()
        # The box point that moves w.z furthest towards b: each coordinate at its far edge.
        towards_b = np.sign(b - w @ t) * np.sign(w)
        corner = np.where(w == 0, t, (towards_b > 0).astype(float))
        np.testing.assert_allclose(t + d, corner, atol=1e-6)
    assert n_checked > 20


# ------------------------------------------------------------------------------ attacks


@pytest.mark.parametrize("name", ["apgd-ce", "apgd-t", "fab-t", "square"])
def test_attack_stays_in_eps_ball_and_box(model_fn, batch, name):
    x, labels = batch
    attack = {"apgd-ce": apgd, "apgd-t": apgd_targeted, "fab-t": fab_targeted, "square": square}[
        name
    ]
    x_adv = attack(model_fn, x, labels, eps=0.3, seed=0, **QUICK[name])
    _assert_in_ball(x_adv, x, 0.3)


def test_apgd_ce_fools_an_undefended_model(model_fn, batch):
    x, labels = batch
    x_adv = apgd(model_fn, x, labels, eps=EPS, n_iter=50)
    assert _accuracy(model_fn, x_adv, labels) <= 0.05


def _pgd(model_fn, x, labels, eps, n_steps, step_size, seed):
    """Plain PGD on cross-entropy with a uniform random start, L-inf."""
    x = tf.constant(x)
    x_adv = tf.clip_by_value(
        x + tf.random.stateless_uniform(x.shape, [seed, 0], -eps, eps), 0.0, 1.0
    )
    for _ in range(n_steps):
        with tf.GradientTape() as tape:
            tape.watch(x_adv)
            loss = tf.reduce_sum(
                tf.nn.sparse_softmax_cross_entropy_with_logits(labels, model_fn(x_adv))
            )
        gradient = tape.gradient(loss, x_adv)
        x_adv = tf.clip_by_value(x_adv + step_size * tf.sign(gradient), x - eps, x + eps)
        x_adv = tf.clip_by_value(x_adv, 0.0, 1.0)
    return x_adv.numpy()


def test_apgd_ce_at_least_as_strong_as_pgd(model_fn, batch):
    # At a radius where PGD leaves part of the batch robust, APGD-CE (same 50-step budget)
    # must leave at most as many robust points, up to one point (1/40) for luck.
    x, labels = batch
    eps = 0.035
    pgd_accuracy = _accuracy(model_fn, _pgd(model_fn, x, labels, eps, 50, eps / 4, 0), labels)
    apgd_accuracy = _accuracy(model_fn, apgd(model_fn, x, labels, eps=eps, n_iter=50), labels)
    assert 0.1 < pgd_accuracy < 0.95, "eps no longer in the informative range"
    assert apgd_accuracy <= pgd_accuracy + 1 / 40


class _TanhNet:
    """logits = tanh(x W1) W2 + b, with the cross-entropy and its input gradient in closed form.

    Not convex in x (a linear softmax model is, and APGD then sits in a corner of the ball
    where neither momentum nor the step size shows).
    """

    def __init__(self, seed, dim, hidden=5, classes=4):
        rng = np.random.default_rng(seed)
        self.w1 = rng.normal(0, 2, (dim, hidden)).astype(np.float32)
        self.w2 = rng.normal(0, 1, (hidden, classes)).astype(np.float32)
        self.b = rng.normal(0, 1, classes).astype(np.float32)

    def tf_logits(self, x):
        flat = tf.reshape(x, [tf.shape(x)[0], -1])
        return tf.tanh(flat @ tf.constant(self.w1)) @ tf.constant(self.w2) + tf.constant(self.b)

    def numpy_logits(self, x):
        return np.tanh(x.reshape(len(x), -1) @ self.w1) @ self.w2 + self.b

    def ce_and_gradient(self, x, labels):
        w1, w2, b = (v.astype(np.float64) for v in (self.w1, self.w2, self.b))
        hidden = np.tanh(x.reshape(len(x), -1) @ w1)
        logits = hidden @ w2 + b
        p = np.exp(logits - logits.max(1, keepdims=True))
        p /= p.sum(1, keepdims=True)
        rows = np.arange(len(x))
        d_logits = p.copy()
        d_logits[rows, labels] -= 1.0
        d_x = ((d_logits @ w2.T) * (1.0 - hidden**2)) @ w1.T
        return -np.log(p[rows, labels]), d_x.reshape(x.shape)


def _numpy_apgd(net, x, x_start, labels, eps, n_iter, momentum=0.75, rho=0.75):
    """APGD as Croce & Hein (2020), Algorithm 1, state by state, for checking the TF loop.

    Returns the step size each iteration used, the iterate each left (x_max after a halving)
    and the smallest nonzero loss difference compared (how well the run is conditioned).
    """
    rows = (-1,) + (1,) * (x.ndim - 1)
    lower, upper = np.maximum(x - eps, 0.0), np.minimum(x + eps, 1.0)
    checkpoints = _paper_checkpoints(n_iter)
    f, g = net.ce_and_gradient(x_start, labels)
    eta = np.full(len(x), 2.0 * eps)
    x_prev = x_cur = x_start
    x_max, f_max, g_max = x_start, f, g
    f_prev, n_increases, last_checkpoint = f, np.zeros(len(x)), 0
    # Condition 2 compares with the previous checkpoint, w_0 = 0 at the first one (the
    # reference code instead never applies it there; with n_iter = 10, w_1 = 3 and condition
    # 1 fails only after three increases in a row, which raise f_max, so the two agree).
    halved_last, f_max_last = np.zeros(len(x), bool), f_max
    etas, iterates, gaps = [], [], []
    for k in range(n_iter):
        alpha = 1.0 if k == 0 else momentum  # the first step has no momentum
        z = np.clip(x_cur + eta.reshape(rows) * np.sign(g), lower, upper)
        x_next = np.clip(x_cur + alpha * (z - x_cur) + (1 - alpha) * (x_cur - x_prev), lower, upper)
        f_next, g_next = net.ce_and_gradient(x_next, labels)
        gaps += [np.abs(f_next - f_prev), np.abs(f_next - f_max)]
        n_increases += f_next > f_prev
        better = f_next > f_max
        x_max = np.where(better.reshape(rows), x_next, x_max)
        g_max = np.where(better.reshape(rows), g_next, g_max)
        f_max = np.where(better, f_next, f_max)
        etas.append(eta)
        x_prev, x_cur, g, f_prev = x_cur, x_next, g_next, f_next
        if k + 1 in checkpoints:
            w = k + 1
            condition_1 = n_increases < rho * (w - last_checkpoint)
            condition_2 = ~halved_last & (f_max_last >= f_max)
            halve = condition_1 | condition_2
            eta = np.where(halve, eta / 2.0, eta)
            x_cur = np.where(halve.reshape(rows), x_max, x_cur)
            g = np.where(halve.reshape(rows), g_max, g)
            f_prev = np.where(halve, f_max, f_prev)
            halved_last, f_max_last, n_increases, last_checkpoint = halve, f_max, 0.0, w
        iterates.append(x_cur)
    gaps = np.concatenate(gaps)
    return np.array(etas), np.array(iterates), gaps[gaps > 0].min()


def test_apgd_step_sizes_and_iterates_match_a_numpy_apgd():
    # 10 iterations: checkpoints 3, 5, 6, 7, 8, 9, where rho * interval is never an integer.
    eps, n_iter = 0.2, 10
    net = _TanhNet(seed=2, dim=9)
    rng = np.random.default_rng(2)
    x = rng.uniform(0.2, 0.8, (6, 3, 3, 1)).astype(np.float32)
    labels = np.argmax(net.numpy_logits(x), 1).astype(np.int32)
    x_start = np.clip(x + rng.uniform(-eps, eps, x.shape), 0, 1).astype(np.float32)

    run = _build_apgd_run(net.tf_logits, (3, 3, 1), eps, n_iter, "ce", 0.75, trace=True)
    *_, trace = run(tf.constant(x), tf.constant(x_start), tf.constant(labels), tf.constant(labels))
    etas, iterates, gap = _numpy_apgd(
        net, x.astype(np.float64), x_start.astype(np.float64), labels, eps, n_iter
    )
    assert gap > 1e-6, "a loss comparison is a float32 tie; choose another seed"
    np.testing.assert_allclose(trace["step_size"].numpy(), etas, rtol=1e-6)
    np.testing.assert_allclose(trace["x"].numpy(), iterates, atol=1e-6)

    # The run is one in which both mechanisms show: some points halve, not all alike, and
    # another momentum gives other iterates.
    assert len(set(etas[-1] / eps)) > 1 and etas[-1].min() < 2 * eps
    _, other_momentum, _ = _numpy_apgd(
        net, x.astype(np.float64), x_start.astype(np.float64), labels, eps, n_iter, momentum=0.25
    )
    assert np.abs(other_momentum - iterates).max() > 0.1


def test_apgd_targeted_fools_an_undefended_model(model_fn, batch):
    x, labels = batch
    x_adv = apgd_targeted(model_fn, x, labels, eps=EPS, n_iter=20, n_target_classes=3)
    assert _accuracy(model_fn, x_adv, labels) <= 0.05


def test_fab_targeted_fools_an_undefended_model(model_fn, batch):
    x, labels = batch
    x_adv = fab_targeted(model_fn, x, labels, eps=EPS, n_iter=20, n_target_classes=3)
    assert _accuracy(model_fn, x_adv, labels) <= 0.1


def _linear_model(seed, dim, classes):
    rng = np.random.default_rng(seed)
    w = rng.normal(0, 1, (dim, classes)).astype(np.float32)
    b = rng.normal(0, 0.1, classes).astype(np.float32)

    def logits(x):
        return tf.reshape(tf.cast(x, tf.float32), [tf.shape(x)[0], -1]) @ w + b

    return logits, w, b


def _fab_case():
    # Two classes, so FAB's target is the other class and z_t - z_y = g.x + (b_t - b_y) with
    # g = w_t - w_y, exactly linear. The bias puts the boundary through the centre of the box
    # and the points within 0.05 of it, so no step reaches a box face.
    rng = np.random.default_rng(3)
    w = rng.normal(0, 1, (4, 2)).astype(np.float32)
    b = np.array([0.0, -0.5 * (w[:, 1] - w[:, 0]).sum()], np.float32)

    def logits(x):
        return tf.reshape(tf.cast(x, tf.float32), [tf.shape(x)[0], -1]) @ w + b

    x = (0.5 + rng.uniform(-0.05, 0.05, (6, 2, 2, 1))).astype(np.float32)
    z = logits(x).numpy()
    labels = np.argmax(z, 1).astype(np.int32)
    g = (w[:, 1 - labels] - w[:, labels]).T  # [B, D] gradient of z_t - z_y
    difference = -np.abs(z[:, 0] - z[:, 1])  # z_t - z_y < 0
    # The smallest L-inf step onto g.z = g.x - difference moves every coordinate by
    # lam * sign(g_i), lam = -difference / ||g||_1.
    lam = -difference / np.abs(g).sum(1)
    assert lam.min() > 1e-3 and lam.max() <= 0.05
    return logits, x, labels, np.sign(g).reshape(x.shape), lam.reshape(-1, 1, 1, 1)


def test_fab_first_iteration_is_the_overshot_projection():
    logits, x, labels, direction, lam = _fab_case()
    x_adv = fab_targeted(logits, x, labels, eps=0.3, n_iter=1, n_target_classes=1)
    # From x1 = x0 = x both projections coincide: x + eta * lam * sign(g), eta = 1.05.
    np.testing.assert_allclose(x_adv.numpy(), x + 1.05 * lam * direction, atol=1e-6)


def test_fab_second_iteration_steps_back_and_mixes_the_two_projections():
    logits, x, labels, direction, lam = _fab_case()
    x_adv = fab_targeted(logits, x, labels, eps=0.3, n_iter=2, n_target_classes=1)
    # Iteration 1 lands at 1.05 lam (adversarial); the backward step (beta = 0.9) restarts
    # at 0.945 lam, where the remaining distance to the boundary is 0.055 lam. Its
    # projection overshoots to 0.945 + 1.05 * 0.055; the clean point's to 1.05; they mix with
    # alpha = 0.055 / (0.055 + 1) <= alpha_max = 0.1, and the result, closer to x than the
    # first adversarial point, replaces it.
    alpha = 0.055 / 1.055
    coefficient = (0.945 + 1.05 * 0.055) * (1 - alpha) + 1.05 * alpha
    np.testing.assert_allclose(x_adv.numpy(), x + coefficient * lam * direction, atol=1e-6)


def test_square_first_query_follows_the_proposal_and_acceptance_rule():
    # 8x8 images: the first square has side round(sqrt(0.8 * 64)) = 7, so its corner, drawn
    # in [0, 8 - 7), is (0, 0); row 7 and column 7 keep the initial vertical stripes.
    eps, side = 0.05, 7
    logits, _, _ = _linear_model(seed=4, dim=8 * 8 * 2, classes=3)
    rng = np.random.default_rng(4)
    x = rng.uniform(0.2, 0.8, (24, 8, 8, 2)).astype(np.float32)
    labels = np.argmax(logits(x).numpy(), 1).astype(np.int32)
    run = _build_square_run(logits, (8, 8, 2), eps, 1, np.array([side], np.int32))
    x_best = run(tf.constant(x), tf.constant(labels), tf.constant([0, 0], tf.int64)).numpy()

    def margin(points, labels=labels):
        z = logits(points).numpy()
        rows = np.arange(len(z))
        labels = np.broadcast_to(labels, len(z))
        true = z[rows, labels]
        z[rows, labels] = -np.inf
        return true - z.max(1)

    signs = np.round((x_best - x) / eps)
    np.testing.assert_allclose(x_best, x + eps * signs, atol=1e-6)
    assert set(np.unique(signs)) == {-1.0, 1.0}
    stripes = signs[:, 7:8]  # the row outside the square: one sign per column and channel
    init = x + eps * np.broadcast_to(stripes, x.shape)
    assert (margin(init) > 0).all(), "an initial point is already adversarial"
    accepted = 0
    for i in range(len(x)):
        window = signs[i, :side, :side]
        if np.allclose(x_best[i], init[i], atol=1e-6):
            # Kept the stripes: the drawn proposal (one sign per channel) did not lower the
            # margin; at least one of the per-channel sign choices must not have.
            candidates = [init[i].copy() for _ in range(4)]
            for candidate, channel_signs in zip(candidates, [(-1, -1), (-1, 1), (1, -1), (1, 1)]):
                candidate[:side, :side] = x[i, :side, :side] + eps * np.array(channel_signs)
            worse = margin(np.stack(candidates), labels[i]) >= margin(init[i : i + 1], labels[i])
            assert worse.any(), i
        else:
            accepted += 1
            # The square holds x + eps * (one sign per channel), and the margin went down.
            channel_signs = window[0, 0]
            np.testing.assert_array_equal(window, np.broadcast_to(channel_signs, window.shape))
            assert margin(x_best[i : i + 1], labels[i]) < margin(init[i : i + 1], labels[i]), i
    assert 0 < accepted < len(x), "the query should be accepted for some points, not all"


def test_square_needs_no_gradients(model_fn, batch):
    # Behind stop_gradient the input gradient is zero: APGD cannot move beyond its random
    # start, while Square, which only queries the model, still finds adversarial examples.
    x, labels = batch
    masked = lambda inputs: tf.stop_gradient(model_fn(inputs))  # noqa: E731
    with pytest.warns(RuntimeWarning, match="zero input gradient"):
        apgd_accuracy = _accuracy(model_fn, apgd(masked, x, labels, eps=EPS, n_iter=20), labels)
    square_accuracy = _accuracy(model_fn, square(masked, x, labels, eps=EPS, n_queries=300), labels)
    assert apgd_accuracy >= 0.8
    assert square_accuracy <= 0.5


# ------------------------------------------------------------------------------ runner


def test_runner_worst_case_is_below_every_component(model_fn, batch):
    x, labels = batch
    eps = 0.035
    result = run_autoattack(model_fn, x, labels, eps=eps, attack_options=QUICK)
    for name in ("apgd-ce", "apgd-t", "fab-t", "square"):
        alone = run_autoattack(
            model_fn, x, labels, eps=eps, version="custom", attacks=[name], attack_options=QUICK
        )
        assert result["robust_accuracy"] <= alone["robust_accuracy"], name
        assert result["robust_accuracy"] <= result["per_attack"][name]["robust_accuracy_after"]
    # APGD-CE runs first on the same batch, and FAB-T is deterministic per point, so the
    # worst case also holds point by point for them.
    for name in ("apgd-ce", "fab-t"):
        alone = run_autoattack(
            model_fn, x, labels, eps=eps, version="custom", attacks=[name], attack_options=QUICK
        )
        assert not np.any(result["robust_mask"] & ~alone["robust_mask"]), name
    assert 0.0 < result["robust_accuracy"] < result["clean_accuracy"], "uninformative eps"


def test_runner_reports_consistent_results(model_fn, batch):
    x, labels = batch
    x = np.concatenate([x, x[:4]])
    labels = np.concatenate([labels, (labels[:4] + 1) % NUM_CLASSES])  # 4 wrong labels
    result = run_autoattack(
        model_fn,
        x,
        labels,
        eps=0.035,
        version="custom",
        attacks=["apgd-ce"],
        batch_size=16,
        attack_options=QUICK,
    )
    predictions = np.argmax(model_fn(result["x_adv"]).numpy(), 1)
    assert result["clean_accuracy"] == pytest.approx(40 / 44)
    np.testing.assert_array_equal(result["robust_mask"], predictions == labels)
    assert result["robust_accuracy"] == pytest.approx(result["robust_mask"].mean())
    # Misclassified clean points are never attacked.
    np.testing.assert_array_equal(result["x_adv"][-4:], x[-4:])
    _assert_in_ball(result["x_adv"], x, 0.035)


def test_the_autoattack_class_gives_run_autoattacks_result(model_fn, batch):
    x, labels = batch
    x = np.concatenate([x[:20], x[:4]])
    labels = np.concatenate([labels[:20], (labels[:4] + 1) % NUM_CLASSES])  # 4 wrong labels
    settings = dict(
        eps=0.035, version="custom", attacks=["apgd-ce", "square"], attack_options=QUICK, seed=3
    )
    result = run_autoattack(model_fn, x, labels, batch_size=16, **settings)
    adversary = AutoAttack(model_fn, norm="Linf", **settings)
    x_adv, report = adversary.run_standard_evaluation(x, labels, batch_size=16)
    np.testing.assert_array_equal(x_adv, result["x_adv"])
    for key in ("clean_accuracy", "robust_accuracy", "attacks", "eps", "n", "version"):
        assert report[key] == result[key], key
    np.testing.assert_array_equal(report["robust_mask"], result["robust_mask"])
    np.testing.assert_array_equal(report["y_adv"], np.argmax(model_fn(x_adv).numpy(), 1))
    assert adversary.clean_accuracy(x, labels, batch_size=16) == report["clean_accuracy"]
    assert 0.0 < report["robust_accuracy"] < report["clean_accuracy"] == 20 / 24, "uninformative"
    with pytest.raises(ValueError, match="'L2'"):
        AutoAttack(model_fn, norm="L2")


def test_same_seed_gives_same_result(model_fn, batch):
    x, labels = batch
    runs = [
        run_autoattack(model_fn, x, labels, eps=0.035, seed=7, attack_options=QUICK)
        for _ in range(2)
    ]
    np.testing.assert_array_equal(runs[0]["x_adv"], runs[1]["x_adv"])
    np.testing.assert_array_equal(runs[0]["robust_mask"], runs[1]["robust_mask"])


def test_runner_warns_about_probability_outputs(model_fn, batch):
    x, labels = batch
    softmax = lambda inputs: tf.nn.softmax(model_fn(inputs))  # noqa: E731
    with pytest.warns(RuntimeWarning, match="probability distribution"):
        run_autoattack(
            softmax,
            x[:4],
            labels[:4],
            eps=0.01,
            version="custom",
            attacks=["apgd-ce"],
            attack_options={"apgd-ce": {"n_iter": 2}},
        )


def test_runner_warns_about_a_randomised_model(model_fn, batch):
    x, labels = batch

    def noisy(inputs):
        return model_fn(inputs) + tf.random.normal([tf.shape(inputs)[0], NUM_CLASSES])

    with pytest.warns(RuntimeWarning, match="changes between identical calls"):
        run_autoattack(
            noisy,
            x[:4],
            labels[:4],
            eps=0.01,
            version="custom",
            attacks=["apgd-ce"],
            attack_options={"apgd-ce": {"n_iter": 2}},
        )


def test_runner_warns_when_square_beats_gradient_attacks(model_fn, batch):
    x, labels = batch
    masked = lambda inputs: tf.stop_gradient(model_fn(inputs))  # noqa: E731
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        run_autoattack(
            masked,
            x,
            labels,
            eps=EPS,
            version="custom",
            attacks=["apgd-ce", "square"],
            attack_options={"apgd-ce": {"n_iter": 5}, "square": {"n_queries": 300}},
        )
    assert any("Square Attack lowered" in str(w.message) for w in caught)


def test_runner_does_not_warn_on_a_sound_model(model_fn, batch):
    x, labels = batch
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        run_autoattack(model_fn, x[:8], labels[:8], eps=0.035, attack_options=QUICK)
    assert not [w for w in caught if issubclass(w.category, RuntimeWarning)]


def test_arguments_are_checked(model_fn, batch):
    x, labels = batch
    with pytest.raises(ValueError, match="eps=8"):
        apgd(model_fn, x, labels, eps=8)
    with pytest.raises(ValueError, match="loss='cw'"):
        apgd(model_fn, x, labels, eps=0.1, loss="cw")
    with pytest.raises(ValueError, match="version='plus'"):
        run_autoattack(model_fn, x, labels, eps=0.1, version="plus")
    with pytest.raises(ValueError, match="only used with version='custom'"):
        run_autoattack(model_fn, x, labels, eps=0.1, attacks=["apgd-ce"])
    with pytest.raises(ValueError, match="must be in \\[0, 1\\]"):
        square(model_fn, x * 2.0 + 0.5, labels, eps=0.1)


# --------------------------------------------------------------------------- targets, sequence


def _third_class_only_model(x):
    """4 classes on 2x2x1 images. At the grey image class 0 leads, class 1 (constant) is the
    runner-up and can never win, class 2 ranks third and wins once the mean pixel rises by
    0.04 (of eps 0.05: no random start gets there); class 3 is far behind. Only a targeted
    attack that goes past the runner-up succeeds."""
    x = tf.cast(x, tf.float32)
    mean = tf.reduce_mean(tf.reshape(x, [tf.shape(x)[0], -1]), axis=1)
    ones = tf.ones_like(mean)
    return tf.stack([ones, 0.9 * ones, 0.5 + 12.5 * (mean - 0.5), -ones], axis=1)


@pytest.mark.parametrize("attack", [apgd_targeted, fab_targeted])
def test_targeted_attacks_go_on_past_the_runner_up_class(attack):
    x = np.full((8, 2, 2, 1), 0.5, np.float32)
    labels = np.zeros(8, np.int32)
    ranking = np.argsort(-_third_class_only_model(x).numpy(), axis=1)
    assert np.all(ranking[:, :3] == [0, 1, 2])
    runner_up_only = attack(
        _third_class_only_model, x, labels, eps=0.05, n_iter=10, n_target_classes=1
    )
    assert np.all(np.argmax(_third_class_only_model(runner_up_only).numpy(), 1) == 0)
    x_adv = attack(_third_class_only_model, x, labels, eps=0.05, n_iter=10, n_target_classes=3)
    assert np.all(np.argmax(_third_class_only_model(x_adv).numpy(), 1) == 2)
    _assert_in_ball(x_adv, x, 0.05)


def test_each_point_keeps_the_example_of_the_first_attack_that_broke_it(model_fn, batch):
    # Later attacks run on the points earlier ones left robust: a broken point's stored example
    # is the first breaker's, untouched by the attacks after it.
    x, labels = batch
    eps = 0.035
    options = {"apgd-ce": {"n_iter": 5}, "square": {"n_queries": 100}}
    first = run_autoattack(
        model_fn, x, labels, eps=eps, version="custom", attacks=["apgd-ce"], attack_options=options
    )
    both = run_autoattack(
        model_fn,
        x,
        labels,
        eps=eps,
        version="custom",
        attacks=["apgd-ce", "square"],
        attack_options=options,
    )
    assert first["clean_accuracy"] == 1.0  # the batch fixture holds correctly classified points
    broken_first = ~first["robust_mask"]
    assert 0 < broken_first.sum() < len(labels), "uninformative eps"
    np.testing.assert_array_equal(both["x_adv"][broken_first], first["x_adv"][broken_first])
    # Square does change points when it runs on them, so the equality above is informative.
    alone = run_autoattack(
        model_fn, x, labels, eps=eps, version="custom", attacks=["square"], attack_options=options
    )
    hit = broken_first & ~alone["robust_mask"]
    assert hit.any() and not np.allclose(alone["x_adv"][hit], first["x_adv"][hit])


# ------------------------------------------------------------------ the standard version's settings
# fra31/auto-attack autoattack/autoattack.py:33-47 (APGD n_iter=100, rho=.75; Square
# n_queries=5000) and :306-320 (set_version("standard"): APGD-T and FAB-T on 9 target classes,
# one restart each, Square 5000 queries); the step schedule autopgd_base.py:134, :153-155.


def _linear_logits(num_classes, seed=0):
    """A fixed linear model of 8x8 one-channel images: logits only, `num_classes` of them."""
    kernel = tf.constant(np.random.default_rng(seed).normal(0, 1, (64, num_classes)), tf.float32)
    return lambda images: tf.reshape(tf.cast(images, tf.float32), [-1, 64]) @ kernel


@pytest.mark.parametrize("num_classes, warned", [(9, True), (10, False)])
def test_standard_apgd_t_and_fab_t_target_nine_classes(num_classes, warned):
    """With 9 classes only 8 targets exist, and the runner says so for each targeted attack;
    with 10 it does not: so each asks for exactly 9. The one point is wrong when clean, so no
    attack runs."""
    model_fn = _linear_logits(num_classes)
    x = np.full((1, 8, 8, 1), 0.5, np.float32)
    y = (np.argmax(model_fn(x).numpy(), 1) + 1) % num_classes
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        _, report = AutoAttack(model_fn, eps=EPS).run_standard_evaluation(x, y)
    assert report["attacks"] == ["apgd-ce", "apgd-t", "fab-t", "square"]
    messages = " ".join(str(w.message) for w in caught)
    for name in ("apgd-t", "fab-t"):
        expected = f"{name} asks for 9 target classes but the model has only 8 other classes"
        assert (expected in messages) == warned, messages
    assert ("target classes" in messages) == warned


def test_standard_square_spends_5000_queries():
    """A model Square never fools: it queries it for its whole budget, which is 5000 queries
    more than a budget of 1 apart from the one query of each (whatever the runner's own)."""
    calls = tf.Variable(0, dtype=tf.int64)
    linear = _linear_logits(10)

    def counted(images):
        calls.assign_add(tf.cast(tf.shape(images)[0], tf.int64))
        return linear(images) * 0.0 + tf.one_hot([0], 10) * 100.0  # always class 0

    x, y = np.full((1, 8, 8, 1), 0.5, np.float32), np.zeros(1, np.int64)
    queries = []
    for options in (None, {"square": {"n_queries": 1}}):
        calls.assign(0)
        adversary = AutoAttack(
            counted, eps=EPS, version="custom", attacks=["square"], attack_options=options
        )
        _, report = adversary.run_standard_evaluation(x, y)
        assert report["robust_accuracy"] == 1.0
        queries.append(int(calls.numpy()))
    assert queries[0] - queries[1] == 5000 - 1


def test_standard_apgd_runs_100_iterations_on_the_reference_schedule(model_fn, batch):
    """The runner's APGD-CE and APGD-T give what `apgd` and `apgd_targeted` give with the
    reference's settings (100 iterations, rho 0.75, one restart, 9 targets): a point's
    adversarial image is its last misclassified iterate, so another budget or another halving
    rule moves it."""
    x, labels = batch[0][:8], batch[1][:8]
    expected = {
        "apgd-ce": apgd(model_fn, x, labels, eps=EPS, n_iter=100, loss="ce", rho=0.75),
        "apgd-t": apgd_targeted(
            model_fn, x, labels, eps=EPS, n_iter=100, n_target_classes=9, rho=0.75
        ),
    }
    for name, x_expected in expected.items():
        x_expected = np.asarray(x_expected)
        fooled = np.argmax(model_fn(x_expected).numpy(), 1) != labels
        assert fooled.sum() >= 4, f"{name} fools too few points to tell settings apart"
        adversary = AutoAttack(model_fn, eps=EPS, version="custom", attacks=[name])
        x_adv, report = adversary.run_standard_evaluation(x, labels)
        np.testing.assert_array_equal(report["robust_mask"], ~fooled, err_msg=name)
        np.testing.assert_allclose(x_adv[fooled], x_expected[fooled], atol=1e-6, err_msg=name)
