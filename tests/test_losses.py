"""Tests for dgad_tf.losses against NumPy re-derivations written here with plain loops."""

import numpy as np
import pytest
import tensorflow as tf

from dgad_tf import losses

# Compared with an independent reference: CI also runs these with TF_ENABLE_ONEDNN_OPTS=0.
pytestmark = pytest.mark.parity

TOL = dict(rtol=1e-5, atol=1e-5)


# ----------------------------------------------------------------------------- NumPy truth
def np_log_softmax(z):
    z = np.asarray(z, np.float64)
    shifted = z - z.max()
    return shifted - np.log(np.exp(shifted).sum())


def np_kl(p_logits, q_logits, temperature=1.0):
    log_p = np_log_softmax(np.asarray(p_logits, np.float64) / temperature)
    log_q = np_log_softmax(np.asarray(q_logits, np.float64) / temperature)
    return float(np.sum(np.exp(log_p) * (log_p - log_q)))


def np_ce(logits, label):
    return -np_log_softmax(logits)[label]


def np_swap(row, y):
    """Swap row[y] with the largest other entry (first index on ties)."""
    row = np.array(row, np.float64)
    best_j = None
    for j in range(len(row)):
        if j != y and (best_j is None or row[j] > row[best_j]):
            best_j = j
    out = row.copy()
    out[y], out[best_j] = row[best_j], row[y]
    return out


def np_dgad(sc, sa, tc, ta, y, beta=1.0, use_map=True, use_els=True, global_batch_size=None):
    n, num_classes = sc.shape
    batch = global_batch_size or n
    distill_sum, clean_kls, adv_kls = 0.0, [], []
    swapped_clean = swapped_adv = misclassified = 0
    for i in range(n):
        in_m = use_map and int(np.argmax(tc[i])) != int(y[i])
        misclassified += int(in_m)
        if in_m:
            teacher = np.array(tc[i], np.float64)
            if use_els:
                new = np_swap(teacher, y[i])
                swapped_clean += int(np.any(new != teacher))
                teacher = new
            kl = np_kl(teacher, sc[i])
            clean_kls.append(kl)
        else:
            teacher = np.array(ta[i], np.float64)
            if use_els:
                largest_other = max(teacher[j] for j in range(num_classes) if j != y[i])
                if teacher[y[i]] < largest_other:
                    teacher = np_swap(teacher, y[i])
                    swapped_adv += 1
            kl = np_kl(teacher, sa[i])
            adv_kls.append(kl)
        distill_sum += kl
    pcr = 0.0
    for i in range(n):
        gap = np.exp(np_log_softmax(sa[i])) - np.exp(np_log_softmax(sc[i]))
        pcr += float(np.sum(gap**2))
    pcr /= batch * num_classes
    return {
        "total": distill_sum / batch + beta * pcr,
        "distill": distill_sum / batch,
        "kl_clean": float(np.mean(clean_kls)) if clean_kls else 0.0,
        "kl_adv": float(np.mean(adv_kls)) if adv_kls else 0.0,
        "pcr": pcr,
        "num_misclassified": misclassified,
        "num_swapped_clean": swapped_clean,
        "num_swapped_adv": swapped_adv,
    }


def random_batch(seed, n=16, num_classes=10, teacher_right_fraction=0.5):
    rng = np.random.default_rng(seed)
    y = rng.integers(0, num_classes, size=n)
    sc, sa, tc, ta = (
        rng.normal(0, 2.0, size=(n, num_classes)).astype(np.float32) for _ in range(4)
    )
    right = rng.random(n) < teacher_right_fraction
    tc[right, y[right]] = tc[right].max(axis=1) + 2.0  # teacher right on clean for these
    ta[right, y[right]] += 3.0
    return sc, sa, tc, ta, y


def as_numpy(result):
    return {k: float(v.numpy()) for k, v in result.items()}


def assert_matches(result, expected):
    got = as_numpy(result)
    for key, value in expected.items():
        np.testing.assert_allclose(got[key], value, err_msg=key, **TOL)


# ----------------------------------------------------------------------------- kl / swap
def test_kl_divergence_matches_numpy_at_temperatures():
    rng = np.random.default_rng(1)
    p, q = rng.normal(0, 3, (5, 7)).astype(np.float32), rng.normal(0, 3, (5, 7)).astype(np.float32)
    for temperature in (1.0, 4.0):
        got = losses.kl_divergence(p, q, temperature).numpy()
        expected = [np_kl(p[i], q[i], temperature) for i in range(5)]
        np.testing.assert_allclose(got, expected, **TOL)


def test_kl_divergence_is_zero_for_shifted_identical_logits():
    p = np.array([[1.0, 2.0, 3.0]], np.float32)
    np.testing.assert_allclose(losses.kl_divergence(p, p + 10.0).numpy(), [0.0], atol=1e-6)


def test_swap_true_with_max_exact_vector_and_unmasked_rows():
    logits = tf.constant([[1.0, 5.0, 2.0, 3.0], [1.0, 5.0, 2.0, 3.0]])
    out = losses.swap_true_with_max(logits, [2, 2], [True, False]).numpy()
    np.testing.assert_array_equal(out[0], [1.0, 2.0, 5.0, 3.0])
    np.testing.assert_array_equal(out[1], [1.0, 5.0, 2.0, 3.0])
    assert np.argmax(out[0]) == 2


def test_swap_true_with_max_picks_first_of_tied_other_classes():
    out = losses.swap_true_with_max(tf.constant([[0.0, 4.0, 4.0]]), [0], [True]).numpy()
    np.testing.assert_array_equal(out[0], [4.0, 0.0, 4.0])


# ----------------------------------------------------------------------------- dgad_loss
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_dgad_loss_matches_numpy_on_random_logits(seed):
    sc, sa, tc, ta, y = random_batch(seed)
    result = losses.dgad_loss(sc, sa, tc, ta, y, beta=1.5)
    expected = np_dgad(sc, sa, tc, ta, y, beta=1.5)
    assert 0 < expected["num_misclassified"] < len(y)
    assert expected["num_swapped_clean"] > 0 and expected["num_swapped_adv"] > 0
    assert_matches(result, expected)


def test_dgad_loss_matches_numpy_with_global_batch_size():
    sc, sa, tc, ta, y = random_batch(3)
    result = losses.dgad_loss(sc, sa, tc, ta, y, global_batch_size=40)
    assert_matches(result, np_dgad(sc, sa, tc, ta, y, global_batch_size=40))


def test_dgad_loss_halves_with_global_batch_size_sum_to_full_batch():
    sc, sa, tc, ta, y = random_batch(4, n=12)
    full = losses.dgad_loss(sc, sa, tc, ta, y)["total"].numpy()
    halves = [
        losses.dgad_loss(sc[s], sa[s], tc[s], ta[s], y[s], global_batch_size=12)["total"].numpy()
        for s in (slice(0, 6), slice(6, 12))
    ]
    np.testing.assert_allclose(sum(halves), full, **TOL)


def test_dgad_loss_teacher_right_everywhere_uses_only_adversarial_term():
    sc, sa, tc, ta, y = random_batch(5, teacher_right_fraction=1.0)
    result = as_numpy(losses.dgad_loss(sc, sa, tc, ta, y))
    assert result["num_misclassified"] == 0
    assert result["kl_clean"] == 0.0
    adv_only = np.mean(
        [
            np_kl(
                np_swap(ta[i], y[i]) if ta[i][y[i]] < np.delete(ta[i], y[i]).max() else ta[i], sa[i]
            )
            for i in range(len(y))
        ]
    )
    np.testing.assert_allclose(result["distill"], adv_only, **TOL)
    np.testing.assert_allclose(result["kl_adv"], adv_only, **TOL)


def test_dgad_loss_teacher_wrong_everywhere_is_finite_and_uses_clean_term():
    sc, sa, tc, ta, y = random_batch(6, teacher_right_fraction=0.0)
    y = (np.argmax(tc, axis=1) + 1) % tc.shape[1]  # guarantee every teacher prediction is wrong
    result = losses.dgad_loss(sc, sa, tc, ta, y)
    values = as_numpy(result)
    assert all(np.isfinite(v) for v in values.values())
    assert values["num_misclassified"] == len(y)
    assert values["kl_adv"] == 0.0
    assert_matches(result, np_dgad(sc, sa, tc, ta, y))


def test_dgad_loss_gradients_finite_when_all_misclassified():
    sc, sa, tc, ta, y = random_batch(7, teacher_right_fraction=0.0)
    y = (np.argmax(tc, axis=1) + 1) % tc.shape[1]
    sc, sa = tf.Variable(sc), tf.Variable(sa)
    with tf.GradientTape() as tape:
        total = losses.dgad_loss(sc, sa, tc, ta, y)["total"]
    for grad in tape.gradient(total, [sc, sa]):
        assert np.all(np.isfinite(grad.numpy()))


def test_dgad_loss_ties_are_not_swapped_and_break_to_lowest_index():
    y = np.array([1, 2])
    # Row 0: teacher clean ties classes 0 and 1 at the top; argmax picks 0 != y, so it is in M,
    # but swapping two equal logits changes nothing. Row 1: teacher right on clean, and the
    # adversarial true logit ties the largest other one: strict "<" leaves it unswapped.
    tc = np.array([[3.0, 3.0, 0.0], [0.0, 1.0, 5.0]], np.float32)
    ta = np.array([[0.0, 2.0, 1.0], [2.0, 0.0, 2.0]], np.float32)
    sc = np.array([[0.5, 0.1, 0.2], [0.3, 0.2, 0.1]], np.float32)
    sa = np.array([[0.1, 0.4, 0.2], [0.0, 0.6, 0.2]], np.float32)
    result = losses.dgad_loss(sc, sa, tc, ta, y)
    values = as_numpy(result)
    assert values["num_misclassified"] == 1
    assert values["num_swapped_clean"] == 0
    assert values["num_swapped_adv"] == 0
    assert_matches(result, np_dgad(sc, sa, tc, ta, y))


def test_dgad_loss_clean_swap_targets_the_exact_swapped_vector():
    # Teacher predicts class 0 for a sample of class 2. If ELS produces exactly [1, 2, 4] the
    # clean KL to a student emitting those logits is zero; the unswapped teacher would give > 0.
    tc = np.array([[4.0, 2.0, 1.0]], np.float32)
    ta = np.zeros((1, 3), np.float32)
    student = np.array([[1.0, 2.0, 4.0]], np.float32)
    values = as_numpy(losses.dgad_loss(student, student, tc, ta, [2], beta=0.0))
    assert values["num_swapped_clean"] == 1
    assert values["kl_clean"] < 1e-6
    raw = as_numpy(losses.dgad_loss(student, student, tc, ta, [2], beta=0.0, use_els=False))
    assert raw["kl_clean"] > 1.0


def test_dgad_loss_use_map_false_changes_only_distillation_term():
    sc, sa, tc, ta, y = random_batch(8)
    with_map = as_numpy(losses.dgad_loss(sc, sa, tc, ta, y))
    result = losses.dgad_loss(sc, sa, tc, ta, y, use_map=False)
    values = as_numpy(result)
    assert values["num_misclassified"] == 0
    assert values["pcr"] == with_map["pcr"]
    assert abs(values["distill"] - with_map["distill"]) > 1e-3
    assert_matches(result, np_dgad(sc, sa, tc, ta, y, use_map=False))


def test_dgad_loss_use_els_false_uses_raw_teacher_logits():
    sc, sa, tc, ta, y = random_batch(9)
    with_els = as_numpy(losses.dgad_loss(sc, sa, tc, ta, y))
    result = losses.dgad_loss(sc, sa, tc, ta, y, use_els=False)
    values = as_numpy(result)
    assert values["num_swapped_clean"] == values["num_swapped_adv"] == 0
    assert values["num_misclassified"] == with_els["num_misclassified"]
    assert values["pcr"] == with_els["pcr"]
    assert abs(values["distill"] - with_els["distill"]) > 1e-3
    assert_matches(result, np_dgad(sc, sa, tc, ta, y, use_els=False))


def test_dgad_loss_beta_zero_removes_only_pcr():
    sc, sa, tc, ta, y = random_batch(10)
    values = as_numpy(losses.dgad_loss(sc, sa, tc, ta, y, beta=0.0))
    default = as_numpy(losses.dgad_loss(sc, sa, tc, ta, y))
    assert values["total"] == values["distill"]
    assert values["distill"] == default["distill"]
    assert values["pcr"] == default["pcr"] > 0


def test_dgad_loss_gradients_reach_both_student_outputs_and_not_the_teacher():
    # Teacher right everywhere: no clean KL term, so s_clean gets gradient only through PCR.
    sc, sa, tc, ta, y = random_batch(11, teacher_right_fraction=1.0)
    variables = [tf.Variable(v) for v in (sc, sa, tc, ta)]
    with tf.GradientTape(persistent=True) as tape:
        result = losses.dgad_loss(*variables, y)
        pcr_only = losses.dgad_loss(*variables, y)["pcr"]
    grads = tape.gradient(result["total"], variables)
    np.testing.assert_allclose(
        grads[0].numpy(), tape.gradient(pcr_only, variables[0]).numpy(), atol=1e-7
    )
    assert np.abs(grads[0].numpy()).sum() > 0
    assert np.abs(grads[1].numpy()).sum() > 0
    assert grads[2] is None and grads[3] is None


def _softmax64(logits):
    z = np.exp(logits - logits.max(-1, keepdims=True))
    return z / z.sum(-1, keepdims=True)


def test_pcr_gradient_on_each_student_side_matches_numpy():
    # PCR = sum ||p_adv - p_clean||^2 / (B*C). With g = 2(p_adv - p_clean)/(B*C) and the softmax
    # Jacobian diag(p) - p p^T, d/dz_adv = p_adv*(g - <p_adv, g>), d/dz_clean = -p_clean*(g -
    # <p_clean, g>): both sides are pulled together, neither is a fixed target.
    sc, sa, tc, ta, y = random_batch(13)
    variables = [tf.Variable(v) for v in (sc, sa)]
    with tf.GradientTape() as tape:
        # distill_weight 0: the total is PCR alone, so no KL term can supply a gradient.
        total = losses.dgad_loss(*variables, tc, ta, y, distill_weight=0.0)["total"]
    grad_clean, grad_adv = tape.gradient(total, variables)
    p_clean, p_adv = _softmax64(sc.astype(np.float64)), _softmax64(sa.astype(np.float64))
    g = 2.0 * (p_adv - p_clean) / p_clean.size
    expected_adv = p_adv * (g - (p_adv * g).sum(-1, keepdims=True))
    expected_clean = -p_clean * (g - (p_clean * g).sum(-1, keepdims=True))
    assert np.abs(expected_adv).max() > 1e-4
    np.testing.assert_allclose(grad_adv.numpy(), expected_adv, rtol=1e-4, atol=1e-8)
    np.testing.assert_allclose(grad_clean.numpy(), expected_clean, rtol=1e-4, atol=1e-8)


def test_dgad_loss_matches_under_jit_compiled_function():
    sc, sa, tc, ta, y = random_batch(12)
    compiled = tf.function(lambda *a: losses.dgad_loss(*a)["total"], jit_compile=True)
    np.testing.assert_allclose(
        compiled(sc, sa, tc, ta, tf.constant(y)).numpy(),
        np_dgad(sc, sa, tc, ta, y)["total"],
        **TOL,
    )


@pytest.mark.parametrize(
    "kwargs, message",
    [(dict(beta=-1.0), "beta=-1.0"), (dict(global_batch_size=0), "global_batch_size=0")],
)
def test_dgad_loss_rejects_bad_arguments(kwargs, message):
    sc, sa, tc, ta, y = random_batch(13, n=2)
    with pytest.raises(ValueError, match=message):
        losses.dgad_loss(sc, sa, tc, ta, y, **kwargs)


# ----------------------------------------------------------------------------- baselines
def test_pgd_at_and_clean_loss_match_numpy():
    sc, sa, _, _, y = random_batch(20)
    np.testing.assert_allclose(
        losses.pgd_at_loss(sa, y, global_batch_size=32)["total"].numpy(),
        sum(np_ce(sa[i], y[i]) for i in range(len(y))) / 32,
        **TOL,
    )
    np.testing.assert_allclose(
        losses.clean_loss(sc, y)["total"].numpy(),
        np.mean([np_ce(sc[i], y[i]) for i in range(len(y))]),
        **TOL,
    )


def test_trades_loss_matches_numpy():
    sc, sa, _, _, y = random_batch(21)
    n = len(y)
    expected = np.mean([np_ce(sc[i], y[i]) for i in range(n)]) + 6.0 * np.mean(
        [np_kl(sc[i], sa[i]) for i in range(n)]
    )
    np.testing.assert_allclose(losses.trades_loss(sc, sa, y)["total"].numpy(), expected, **TOL)


@pytest.mark.parametrize("kl_reduction", ["batchmean", "class_mean"])
def test_ard_loss_matches_numpy(kl_reduction):
    sc, sa, tc, _, y = random_batch(22)
    n, num_classes = sc.shape
    alpha, temperature = 0.7, 4.0
    kl = np.mean([np_kl(tc[i], sa[i], temperature) for i in range(n)])
    if kl_reduction == "class_mean":
        kl /= num_classes
    expected = alpha * temperature**2 * kl + (1 - alpha) * np.mean(
        [np_ce(sc[i], y[i]) for i in range(n)]
    )
    got = losses.ard_loss(
        sc, sa, tc, y, alpha=alpha, temperature=temperature, kl_reduction=kl_reduction
    )
    np.testing.assert_allclose(got["total"].numpy(), expected, **TOL)


def test_ard_loss_defaults_are_alpha_one_temperature_thirty():
    sc, sa, tc, _, y = random_batch(23)
    expected = 900.0 * np.mean([np_kl(tc[i], sa[i], 30.0) for i in range(len(y))])
    np.testing.assert_allclose(losses.ard_loss(sc, sa, tc, y)["total"].numpy(), expected, rtol=1e-4)


def test_rslad_loss_matches_numpy_with_global_batch_size():
    sc, sa, tc, _, y = random_batch(24)
    n = len(y)
    expected = (
        5 / 6 * sum(np_kl(tc[i], sa[i]) for i in range(n))
        + 1 / 6 * sum(np_kl(tc[i], sc[i]) for i in range(n))
    ) / 50
    got = losses.rslad_loss(sc, sa, tc, global_batch_size=50)["total"].numpy()
    np.testing.assert_allclose(got, expected, **TOL)


@pytest.mark.parametrize("alpha", [1.0, 0.25])
def test_adaad_loss_matches_numpy(alpha):
    sc, sa, tc, ta, y = random_batch(25)
    n = len(y)
    expected = alpha * np.mean([np_kl(ta[i], sa[i]) for i in range(n)]) + (1 - alpha) * np.mean(
        [np_kl(tc[i], sc[i]) for i in range(n)]
    )
    np.testing.assert_allclose(
        losses.adaad_loss(sc, sa, tc, ta, alpha=alpha)["total"].numpy(), expected, **TOL
    )


def test_baseline_teacher_logits_get_no_gradient():
    sc, sa, tc, ta, y = (tf.Variable(v) if i < 4 else v for i, v in enumerate(random_batch(26)))
    with tf.GradientTape(persistent=True) as tape:
        totals = [
            losses.ard_loss(sc, sa, tc, y, alpha=0.5)["total"],
            losses.rslad_loss(sc, sa, tc)["total"],
            losses.adaad_loss(sc, sa, tc, ta, alpha=0.5)["total"],
        ]
    for total in totals:
        assert tape.gradient(total, tc) is None
        assert tape.gradient(total, ta) is None
        assert tape.gradient(total, sa) is not None


@pytest.mark.parametrize(
    "call, message",
    [
        (lambda b: losses.trades_loss(b[0], b[1], b[4], beta=-2.0), "beta=-2.0"),
        (lambda b: losses.ard_loss(b[0], b[1], b[2], b[4], alpha=1.5), "alpha=1.5"),
        (lambda b: losses.ard_loss(b[0], b[1], b[2], b[4], temperature=0.0), "temperature=0.0"),
        (lambda b: losses.adaad_loss(b[0], b[1], b[2], b[3], alpha=-0.1), "alpha=-0.1"),
    ],
)
def test_baselines_reject_bad_arguments(call, message):
    with pytest.raises(ValueError, match=message):
        call(random_batch(27, n=2))
