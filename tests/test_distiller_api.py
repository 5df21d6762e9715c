"""The Python API of `AdversarialDistiller`: keyword networks, one loss object per method, the
training-attack object, each mistake refused by name, and the config round trip."""

import dataclasses
import json

import keras
import numpy as np
import pytest
import tensorflow as tf

from dgad_tf import build, losses
from dgad_tf.attacks import PGD
from dgad_tf.config import Config, config_from_dict
from dgad_tf.distiller import AdversarialDistiller
from dgad_tf.optim import TorchSGD

TEACHER_FREE = [losses.Clean(), losses.PGDAT(), losses.TRADES()]
DISTILLING = [
    losses.DGAD(),
    losses.AdaAD(),
    losses.ARD(),
    losses.RSLAD(),
    losses.IAD(),
    losses.AdaIAD(),
]


def net(name, width=8):
    inputs = keras.Input((6, 6, 1))
    x = keras.layers.Conv2D(width, 3, padding="same")(inputs)
    x = keras.layers.BatchNormalization()(x)
    x = keras.layers.GlobalAveragePooling2D()(x)
    return keras.Model(inputs, keras.layers.Dense(4)(x), name=name)


def batch(n=16, seed=0, scale=1.0):
    rng = np.random.default_rng(seed)
    x = (rng.uniform(0, 1, (n, 6, 6, 1)) * scale).astype(np.float32)
    return x, rng.integers(0, 4, n).astype(np.int64)


def pgd_at(**kwargs):
    distiller = AdversarialDistiller(
        student=net("student"), loss=losses.PGDAT(), attack=PGD(eps=0.1, steps=1), **kwargs
    )
    distiller.compile(optimizer=TorchSGD(0.05))
    return distiller


def weights(model):
    return [np.array(w) for w in model.weights]


# --------------------------------------------------------------------------- the networks


def test_positional_networks_are_refused_in_either_order():
    teacher, student = net("teacher", 16), net("student")
    # keras.distillation.Distiller's order, and this package's earlier one.
    for args in ((teacher, student), (student, teacher), (student,)):
        with pytest.raises(TypeError, match=r"by keyword.*teacher=.*student="):
            AdversarialDistiller(*args, loss=losses.DGAD())


def test_the_earlier_method_keywords_are_refused_with_the_objects_to_use():
    # The case: method="trades", beta=1.0 used to set DGAD's PCR weight, not TRADES's.
    with pytest.raises(
        TypeError, match=r"beta, method.*loss=dgad_tf\.losses.*dgad_tf\.attacks\.PGD"
    ):
        AdversarialDistiller(student=net("student"), method="trades", beta=1.0)
    with pytest.raises(TypeError, match="eps"):
        AdversarialDistiller(student=net("student"), loss=losses.PGDAT(), eps=0.1)


def test_a_loss_and_an_attack_of_the_right_kind_are_required():
    with pytest.raises(TypeError, match="loss="):
        AdversarialDistiller(student=net("student"))
    with pytest.raises(TypeError, match="dgad_tf.losses.DGAD"):
        AdversarialDistiller(student=net("student"), loss=keras.losses.MeanSquaredError())
    with pytest.raises(TypeError, match="dgad_tf.attacks.PGD"):
        AdversarialDistiller(student=net("student"), loss=losses.PGDAT(), attack={"eps": 0.1})
    with pytest.raises(TypeError, match="student="):
        AdversarialDistiller(teacher=net("teacher"), loss=losses.DGAD())


def test_a_frozen_student_is_refused_when_built_and_when_frozen_later():
    student = net("student")
    student.trainable = False
    with pytest.raises(ValueError, match=r"student\.trainable = True"):
        AdversarialDistiller(student=student, loss=losses.PGDAT())
    distiller = pgd_at()
    distiller.student.trainable = False
    before = weights(distiller.student)
    x, y = batch()
    with pytest.raises(ValueError, match="no trainable variables"):
        distiller.fit(x, y, batch_size=8, epochs=1, verbose=0)
    for b, a in zip(before, weights(distiller.student)):
        np.testing.assert_array_equal(b, a)


@pytest.mark.parametrize("loss", TEACHER_FREE, ids=lambda loss: type(loss).__name__)
def test_a_teacher_is_refused_where_the_loss_needs_none(loss):
    with pytest.raises(ValueError, match=f"{type(loss).__name__} trains without a teacher"):
        AdversarialDistiller(teacher=net("teacher", 16), student=net("student"), loss=loss)


@pytest.mark.parametrize("loss", DISTILLING, ids=lambda loss: type(loss).__name__)
def test_a_missing_teacher_is_refused_where_the_loss_distils(loss):
    with pytest.raises(ValueError, match=f"{type(loss).__name__} distils from a teacher"):
        AdversarialDistiller(student=net("student"), loss=loss)


def test_the_teacher_is_frozen_and_may_not_be_the_student():
    teacher = net("teacher", 16)
    distiller = AdversarialDistiller(teacher=teacher, student=net("student"), loss=losses.DGAD())
    assert distiller.teacher is teacher and not teacher.trainable
    student = net("student")
    with pytest.raises(ValueError, match="same model"):
        AdversarialDistiller(teacher=student, student=student, loss=losses.DGAD())


# --------------------------------------------------------------------------- the loss objects


def test_each_loss_takes_only_its_own_options_by_keyword_and_checks_them():
    assert losses.TRADES(beta=1.0).beta == 1.0
    with pytest.raises(TypeError, match="use_map"):
        losses.TRADES(use_map=False)  # DGAD's option
    with pytest.raises(TypeError):
        losses.TRADES(6.0)
    with pytest.raises(ValueError, match="beta"):
        losses.DGAD(beta=-1.0)
    with pytest.raises(ValueError, match="weighting"):
        losses.DGAD(weighting="mobilenet")
    with pytest.raises(TypeError, match="use_els"):
        losses.DGAD(use_els="yes")
    with pytest.raises(ValueError, match="alpha"):
        losses.AdaAD(alpha=1.5)
    with pytest.raises(ValueError, match="temperature"):
        losses.IAD(temperature=0.0)
    with pytest.raises(ValueError, match="eps"):
        PGD(eps=2.0)
    with pytest.raises(ValueError, match="start"):
        PGD(start="gauss")
    with pytest.raises(ValueError, match="steps"):
        PGD(steps=2.5)
    with pytest.raises(TypeError, match="warmup_epochs"):
        losses.AdaIAD(warmup_epochs=1.5)


def test_the_loss_object_computes_its_methods_loss_with_its_options():
    rng = np.random.default_rng(0)
    logits = {k: tf.constant(rng.normal(0, 2, (8, 4)), tf.float32) for k in ("s_clean", "s_adv")}
    forwards = dict(logits, y=tf.constant(rng.integers(0, 4, 8), tf.int32))
    got = losses.TRADES(beta=1.0)(forwards)["total"]
    expected = losses.trades_loss(logits["s_clean"], logits["s_adv"], forwards["y"], beta=1.0)
    assert float(got) == pytest.approx(float(expected["total"]), rel=1e-6)
    assert float(got) != pytest.approx(float(losses.TRADES()(forwards)["total"]), rel=1e-3)


def test_iad_counts_its_introspection_from_the_epoch_its_warmup_ends():
    loss = losses.IAD(warmup_epochs=3)
    assert [float(loss.introspection(e)) for e in (0, 2, 3, 7)] == [0.0, 0.0, 1.0, 1.0]
    assert float(loss.introspection(tf.Variable(3, dtype=tf.int64))) == 1.0


# --------------------------------------------------------------------------- the config


# Every method's `method:` section with each option changed (and train.batch_size 50), and the
# loss it must build, written out from the loss classes' docs.
CHANGED = {
    "clean": ({}, losses.Clean()),
    "pgd_at": ({}, losses.PGDAT()),
    "trades": ({"beta": 2.0}, losses.TRADES(beta=2.0)),
    "ard": (
        {"alpha": 0.4, "temperature": 5.0, "kl_reduction": "class_mean", "kl_scale": 2.0},
        losses.ARD(alpha=0.4, temperature=5.0, kl_reduction="class_mean", kl_scale=2.0),
    ),
    "rslad": (
        {"kl_reduction": "class_mean", "kl_scale": 2.0, "log_epsilon": 1e-5},
        losses.RSLAD(kl_reduction="class_mean", kl_scale=2.0, log_epsilon=1e-5),
    ),
    "adaad": (
        {"alpha": 0.6, "kl_reduction": "class_mean", "kl_scale": 2.0},
        losses.AdaAD(alpha=0.6, kl_reduction="class_mean", kl_scale=2.0),
    ),
    "iad": (
        {"alpha": 0.7, "beta": 0.2, "temperature": 3.0, "warmup_epochs": 4},
        losses.IAD(alpha=0.7, beta=0.2, temperature=3.0, warmup_epochs=4),
    ),
    "adaiad": (
        {"alpha": 0.7, "beta": 0.2, "temperature": 3.0, "warmup_epochs": 4},
        losses.AdaIAD(alpha=0.7, beta=0.2, temperature=3.0, warmup_epochs=4),
    ),
    "dgad": (
        {
            "beta": 0.3,
            "use_map": False,
            "use_els": False,
            "distill_weight": 0.5,
            "weighting": "reference_mobilenetv2",
        },
        # The configured batch size fills the reference weighting's divisor.
        losses.DGAD(
            beta=0.3,
            use_map=False,
            use_els=False,
            distill_weight=0.5,
            weighting="reference_mobilenetv2",
            reference_batch_size=50,
        ),
    ),
}
FROM_CHANGED = {name: loss for name, (_, loss) in CHANGED.items()}


@pytest.mark.parametrize("method", sorted(CHANGED))
def test_the_config_fills_each_methods_loss_with_that_methods_options(method):
    section, expected = CHANGED[method]
    cfg = config_from_dict({"method": {"name": method, **section}, "train": {"batch_size": 50}})
    assert build.method_loss(cfg) == expected


def test_the_changed_sections_set_every_option_of_every_method():
    assert set(CHANGED) == set(losses.METHOD_LOSSES)
    for name, (section, _) in CHANGED.items():
        # reference_batch_size is filled from train.batch_size above.
        options = set(losses.option_names(losses.get(name))) - {"reference_batch_size"}
        assert set(section) == options, name


def test_the_attack_section_becomes_the_pgd_object():
    cfg = Config()
    cfg = dataclasses.replace(
        cfg,
        attack=dataclasses.replace(
            cfg.attack, eps=0.1, step_size=0.02, steps=3, start="gaussian", start_std=0.01
        ),
    )
    assert build.training_attack(cfg) == PGD(
        eps=0.1, step_size=0.02, steps=3, start="gaussian", start_std=0.01
    )


# --------------------------------------------------------------------------- serialisation


@pytest.mark.parametrize("obj", FROM_CHANGED.values(), ids=lambda o: type(o).__name__)
def test_loss_objects_serialise_as_registered_keras_objects(obj):
    serialized = json.loads(json.dumps(keras.saving.serialize_keras_object(obj)))
    assert serialized["registered_name"] == f"dgad_tf>{type(obj).__name__}"
    assert keras.saving.deserialize_keras_object(serialized) == obj


def test_get_config_and_from_config_rebuild_the_same_distiller():
    original = AdversarialDistiller(
        teacher=net("teacher", 16),
        student=net("student"),
        loss=losses.DGAD(beta=0.5, use_els=False),
        attack=PGD(eps=0.1, step_size=0.02, steps=3, start="none"),
        reference_forwards=True,
        val_robust_steps=4,
        seed=7,
        name="mine",
    )
    config = json.loads(json.dumps(original.get_config()))  # as a .keras file stores it
    rebuilt = AdversarialDistiller.from_config(config)
    assert json.loads(json.dumps(rebuilt.get_config())) == config
    assert rebuilt.method_loss == losses.DGAD(beta=0.5, use_els=False)
    assert rebuilt.attack == PGD(eps=0.1, step_size=0.02, steps=3, start="none")
    assert (rebuilt.reference_forwards, rebuilt.val_robust_steps, rebuilt.seed) == (True, 4, 7)
    assert rebuilt.name == "mine" and not rebuilt.teacher.trainable
    assert [layer.name for layer in rebuilt.student.layers] == [
        layer.name for layer in original.student.layers
    ]
    # Registered with Keras: a distiller in a Keras config deserialises by its name alone.
    serialized = keras.saving.serialize_keras_object(
        AdversarialDistiller(student=net("student"), loss=losses.PGDAT())
    )
    assert serialized["registered_name"] == "dgad_tf>AdversarialDistiller"
    assert keras.saving.deserialize_keras_object(serialized).method_loss == losses.PGDAT()


def _dgad_distiller():
    keras.utils.set_random_seed(0)  # the same initial weights every time
    distiller = AdversarialDistiller(
        teacher=net("teacher", 16), student=net("student"), loss=losses.DGAD(), attack=PGD(eps=0.1)
    )
    distiller.compile(optimizer=TorchSGD(0.05, momentum=0.9))
    return distiller


def test_a_saved_and_loaded_distiller_continues_as_if_never_saved(tmp_path):
    x, y = batch(32)
    straight = _dgad_distiller()
    straight.fit(x, y, batch_size=8, epochs=2, shuffle=False, verbose=0)
    first = _dgad_distiller()
    first.fit(x, y, batch_size=8, epochs=1, shuffle=False, verbose=0)
    first.save(tmp_path / "distiller.keras")
    loaded = keras.saving.load_model(tmp_path / "distiller.keras")
    assert isinstance(loaded.optimizer, TorchSGD) and int(loaded.optimizer.iterations) == 4
    loaded.fit(x, y, batch_size=8, epochs=2, initial_epoch=1, shuffle=False, verbose=0)
    # The optimiser's momentum and step count (which keys the attack's random start) were
    # saved: the second epoch after loading is the uninterrupted run's second epoch.
    for expected, got in zip(weights(straight.student), weights(loaded.student)):
        np.testing.assert_allclose(got, expected, rtol=1e-6, atol=1e-7)
    assert int(loaded.optimizer.iterations) == 8


def test_save_weights_and_load_weights_round_trip_before_and_after_fit(tmp_path):
    x, y = batch(16)
    distiller = _dgad_distiller()
    distiller.save_weights(tmp_path / "before.weights.h5")
    distiller.fit(x, y, batch_size=8, verbose=0)
    distiller.save_weights(tmp_path / "after.weights.h5")
    other = _dgad_distiller()
    other.load_weights(tmp_path / "after.weights.h5")
    for expected, got in zip(weights(distiller.student), weights(other.student)):
        np.testing.assert_array_equal(got, expected)
    other.load_weights(tmp_path / "before.weights.h5")
    for expected, got in zip(weights(_dgad_distiller().student), weights(other.student)):
        np.testing.assert_array_equal(got, expected)


# --------------------------------------------------------------------------- compile and fit


@pytest.mark.parametrize(
    "kwargs",
    [
        dict(loss="sparse_categorical_crossentropy"),
        dict(metrics=["accuracy"]),
        dict(loss_weights=[1.0]),
        dict(weighted_metrics=["accuracy"]),
    ],
    ids=lambda kwargs: next(iter(kwargs)),
)
def test_compile_refuses_what_it_would_ignore(kwargs):
    distiller = AdversarialDistiller(student=net("student"), loss=losses.PGDAT())
    with pytest.raises(ValueError, match=rf"does not use {next(iter(kwargs))}.*`loss=` object"):
        distiller.compile(optimizer=TorchSGD(0.05), **kwargs)
    with pytest.raises(ValueError, match="does not use loss"):
        distiller.compile(TorchSGD(0.05), "mse")  # Keras's positional order


def test_sample_and_class_weights_are_refused():
    distiller = pgd_at()
    x, y = batch()
    with pytest.raises(ValueError, match="sample_weight"):
        distiller.fit(x, y, sample_weight=np.ones(len(y)), verbose=0)
    with pytest.raises(ValueError, match="class_weight"):
        distiller.fit(x, y, class_weight={0: 2.0}, verbose=0)
    with pytest.raises(ValueError, match="sample_weight"):
        distiller.train_on_batch(x, y, sample_weight=np.ones(len(y)))
    weighted = tf.data.Dataset.from_tensor_slices((x, y, np.ones(len(y)))).batch(8)
    with pytest.raises(ValueError, match="sample_weight"):
        distiller.fit(weighted, verbose=0)


def test_batches_without_labels_are_refused():
    x, _ = batch()
    with pytest.raises(ValueError, match="labels"):
        pgd_at().fit(tf.data.Dataset.from_tensor_slices(x).batch(8), verbose=0)


def _as_generator(x, y, size=8):
    for i in range(0, len(y), size):
        yield x[i : i + size], y[i : i + size]


@pytest.mark.parametrize("form", ["arrays", "dataset", "generator", "train_on_batch"])
def test_images_in_0_255_are_refused_before_any_training(form):
    distiller = pgd_at()
    before = weights(distiller.student)
    x, y = batch(scale=255.0)
    with pytest.raises(ValueError, match=r"values in \[\d+(\.\d+)?, 2\d\d(\.\d+)?\].*x / 255"):
        if form == "arrays":
            distiller.fit(x, y, batch_size=8, verbose=0)
        elif form == "dataset":
            distiller.fit(tf.data.Dataset.from_tensor_slices((x, y)).batch(8), verbose=0)
        elif form == "generator":
            distiller.fit(_as_generator(x, y), steps_per_epoch=2, verbose=0)
        else:
            distiller.train_on_batch(x, y)
    assert int(distiller.optimizer.iterations) == 0
    for b, a in zip(before, weights(distiller.student)):
        np.testing.assert_array_equal(b, a)


def test_standardised_images_are_refused_with_the_advice_to_normalise_in_the_model():
    x, y = batch()
    with pytest.raises(ValueError, match=r"values in \[-.*Normalization"):
        pgd_at().fit((x - 0.5) / 0.25, y, batch_size=8, verbose=0)


@pytest.mark.parametrize("form", ["arrays", "train_on_batch"])
def test_images_in_minus_one_to_one_are_refused_though_none_exceeds_one(form):
    x, y = batch()
    x = 2.0 * x - 1.0  # [-1, 1]: the maximum alone says nothing wrong
    assert x.min() < 0.0 and x.max() <= 1.0
    distiller = pgd_at()
    with pytest.raises(ValueError, match=r"values in \[-.*Normalization"):
        if form == "arrays":
            distiller.fit(x, y, batch_size=8, verbose=0)
        else:
            distiller.train_on_batch(x, y)
    assert int(distiller.optimizer.iterations) == 0


def test_the_range_is_checked_on_the_first_batch_only_and_loses_no_batch():
    # A later batch out of range trains: the compiled step holds no check (nothing per step).
    x, y = batch(24)
    x[16:] *= 255.0
    distiller = pgd_at()
    distiller.fit(tf.data.Dataset.from_tensor_slices((x, y)).batch(8), verbose=0)
    assert int(distiller.optimizer.iterations) == 3
    # The batch a generator gave up for the check is still trained on: 3 batches, 3 steps.
    x, y = batch(24)
    distiller = pgd_at()
    distiller.fit(_as_generator(x, y), steps_per_epoch=3, epochs=1, verbose=0)
    assert int(distiller.optimizer.iterations) == 3


def test_only_the_first_training_call_reads_a_batch_more():
    x, y = batch(16)
    passes = []

    def source():
        passes.append(1)  # tf.data calls this once per pass over the dataset
        yield from _as_generator(x, y)

    spec = (tf.TensorSpec((None, 6, 6, 1), tf.float32), tf.TensorSpec((None,), tf.int64))
    dataset = tf.data.Dataset.from_generator(source, output_signature=spec)
    dataset = dataset.apply(tf.data.experimental.assert_cardinality(2))
    distiller = pgd_at()
    distiller.fit(dataset, epochs=1, verbose=0)
    assert len(passes) == 2  # the check's one batch, then training
    distiller.fit(dataset, epochs=1, verbose=0)
    assert len(passes) == 3  # training only
    assert int(distiller.optimizer.iterations) == 4


# --------------------------------------------------------------------------- the first batch


def softmax_net(name, separate_layer):
    inputs = keras.Input((6, 6, 1))
    x = keras.layers.GlobalAveragePooling2D()(keras.layers.Conv2D(8, 3, padding="same")(inputs))
    if separate_layer:
        outputs = keras.layers.Softmax()(keras.layers.Dense(4)(x))
    else:
        outputs = keras.layers.Dense(4, activation="softmax")(x)
    return keras.Model(inputs, outputs, name=name)


def dgad(teacher=None, student=None):
    distiller = AdversarialDistiller(
        teacher=teacher or net("teacher", 16),
        student=student or net("student"),
        loss=losses.DGAD(),
        attack=PGD(eps=0.1, steps=1),
    )
    distiller.compile(optimizer=TorchSGD(0.05))
    return distiller


def fit_once(distiller, x, y, form):
    if form == "arrays":
        distiller.fit(x, y, batch_size=8, verbose=0)
    elif form == "dataset":
        distiller.fit(tf.data.Dataset.from_tensor_slices((x, y)).batch(8), verbose=0)
    else:
        distiller.train_on_batch(x, y)


def assert_untrained(distiller, before):
    assert int(distiller.optimizer.iterations) == 0
    for b, a in zip(before, weights(distiller.student)):
        np.testing.assert_array_equal(b, a)


@pytest.mark.parametrize("form", ["arrays", "dataset", "train_on_batch"])
@pytest.mark.parametrize("role", ["teacher", "student"])
@pytest.mark.parametrize("separate_layer", [False, True], ids=["activation", "layer"])
def test_a_network_returning_probabilities_is_refused_before_the_first_step(
    role, form, separate_layer
):
    distiller = dgad(**{role: softmax_net(f"softmax_{role}", separate_layer)})
    before = weights(distiller.student)
    x, y = batch()
    with pytest.raises(
        ValueError, match=rf"the {role} 'softmax_{role}' returns probabilities.*final softmax"
    ):
        fit_once(distiller, x, y, form)
    assert_untrained(distiller, before)


def test_a_softmax_student_is_refused_without_a_teacher_too():
    distiller = AdversarialDistiller(
        student=softmax_net("s", False), loss=losses.PGDAT(), attack=PGD(eps=0.1, steps=1)
    )
    distiller.compile(optimizer=TorchSGD(0.05))
    x, y = batch()
    with pytest.raises(ValueError, match="student 's' returns probabilities"):
        distiller.fit(x, y, batch_size=8, verbose=0)
    assert int(distiller.optimizer.iterations) == 0


def constant_teacher(predicted_class):
    """A teacher that predicts `predicted_class` for every image (logits, not probabilities)."""
    inputs = keras.Input((6, 6, 1))
    pooled = keras.layers.GlobalAveragePooling2D()(inputs)
    bias = np.where(np.arange(4) == predicted_class, 3.0, -1.0)
    dense = keras.layers.Dense(4, kernel_initializer="zeros", bias_initializer="zeros")
    outputs = dense(pooled)
    dense.bias.assign(bias)
    return keras.Model(inputs, outputs, name="constant_teacher")


def test_a_teacher_at_chance_on_the_first_batch_is_warned_about_loudly(caplog):
    x, _ = batch(16)
    y = np.array([1, 2, 3, 1] * 4)  # the teacher always says 0: accuracy 0 on 16 images
    distiller = dgad(teacher=constant_teacher(0))
    with pytest.warns(RuntimeWarning) as record:
        distiller.fit(x, y, batch_size=16, verbose=0)
    # dgad_tf.fit's threshold, by hand: 1/4 + 3 sqrt(1/4 * 3/4 / 16) = 0.5748
    (warning,) = [w for w in record if "at chance level" in str(w.message)]
    assert warning.filename == __file__  # shown at the user's `fit` call
    message = str(warning.message)
    assert "the teacher 'constant_teacher' is at chance level" in message
    assert "accuracy 0.0% on 16 images, chance 25.0% (it must exceed 57.5%" in message
    assert any("at chance level" in r.getMessage() for r in caplog.records)
    assert int(distiller.optimizer.iterations) == 1  # a warning: the batch still trains


def test_a_teacher_above_chance_on_the_first_batch_gives_no_warning(recwarn):
    x, _ = batch(16)
    y = np.array([0] * 10 + [1] * 6)  # the teacher's 0 is right on 10 of 16 = 62.5% > 57.5%
    dgad(teacher=constant_teacher(0)).fit(x, y, batch_size=16, verbose=0)
    # One image cannot tell: 1/4 + 3 sqrt(3/16) = 1.55, more than a perfect teacher scores.
    dgad(teacher=constant_teacher(0)).fit(x[:1], y[:1], batch_size=1, verbose=0)
    assert not [w for w in recwarn if "chance" in str(w.message)]


@pytest.mark.parametrize(
    "labels, problem",
    [
        (lambda y: np.eye(4, dtype=np.float32)[y], r"shape \(8, 4\) \(one-hot\? pass y.argmax"),
        (lambda y: np.where(y == 0, 4, y), r"label 4 but the model has 4 classes"),
        (lambda y: np.where(y == 0, -1, y), r"label -1; class indices start at 0"),
        (lambda y: y + 0.5, r"integer class indices; received dtype float64"),
    ],
    ids=["one_hot", "too_large", "negative", "fractional"],
)
@pytest.mark.parametrize("form", ["arrays", "dataset", "train_on_batch"])
def test_labels_that_are_not_class_indices_are_refused_before_the_first_step(labels, problem, form):
    distiller = dgad()
    before = weights(distiller.student)
    x, y = batch(8)
    y[0] = 0  # every case changes something
    with pytest.raises(ValueError, match=rf"labels 0..3, one per image.*{problem}.*argmax"):
        fit_once(distiller, x, labels(y), form)
    assert_untrained(distiller, before)


def test_labels_as_a_column_or_whole_floats_train_like_integer_labels():
    x, y = batch(16)
    trained = []
    for labels in (y, y[:, None], y.astype(np.float32)):
        keras.utils.set_random_seed(0)
        distiller = dgad()
        distiller.fit(x, labels, batch_size=8, shuffle=False, verbose=0)
        trained.append(weights(distiller.student))
    for other in trained[1:]:
        for a, b in zip(trained[0], other):
            np.testing.assert_array_equal(a, b)


def named_net(name, input_name="image"):
    inputs = keras.Input((6, 6, 1), name=input_name)
    x = keras.layers.GlobalAveragePooling2D()(keras.layers.Conv2D(8, 3, padding="same")(inputs))
    return keras.Model(inputs, keras.layers.Dense(4)(x), name=name)


def test_images_keyed_by_the_students_input_name_train_as_a_tensor_would():
    x, y = batch(16)
    results = []
    for keyed in (False, True):
        keras.utils.set_random_seed(0)
        distiller = dgad(teacher=net("teacher", 16), student=named_net("student"))
        data = ({"image": x}, y) if keyed else (x, y)
        train = tf.data.Dataset.from_tensor_slices(data).batch(8)
        history = distiller.fit(train, validation_data=train, verbose=0)
        results.append((weights(distiller.student), history.history))
    (tensor_weights, tensor_logs), (dict_weights, dict_logs) = results
    for a, b in zip(tensor_weights, dict_weights):
        np.testing.assert_array_equal(a, b)
    assert dict_logs == tensor_logs and "val_robust_accuracy" in dict_logs


@pytest.mark.parametrize(
    "inputs, problem",
    [
        (lambda x: {"img": x}, r"keys \['img'\] and the student takes one input, named 'image'"),
        (lambda x: {"image": x, "extra": x}, r"keys \['extra', 'image'\]"),
    ],
    ids=["other_key", "two_entries"],
)
def test_a_dict_of_images_the_student_does_not_name_is_refused_before_the_first_step(
    inputs, problem
):
    distiller = dgad(teacher=net("teacher", 16), student=named_net("student"))
    before = weights(distiller.student)
    x, y = batch(8)
    with pytest.raises(ValueError, match=rf"one image tensor per batch.*{problem}.*dataset.map"):
        distiller.fit(tf.data.Dataset.from_tensor_slices((inputs(x), y)).batch(8), verbose=0)
    assert_untrained(distiller, before)
