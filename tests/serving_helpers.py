"""Helpers shared by the tests of dgad_tf.serving (test_serving_*.py); fixtures are in conftest.

The attack is a stand-in PGD defined here, so those tests do not depend on dgad_tf.attacks's PGD.
"""

import contextlib

import keras
import numpy as np
import pytest
import tensorflow as tf

from dgad_tf import attacks

N_EVAL = 200


def _stand_in_pgd_ce(model_fn, x, labels, *, eps, step_size=None, steps=20, restarts=1, seed=None):
    """Sign-gradient ascent on cross-entropy, projected onto the eps-ball and [0, 1]."""
    step_size = eps / 4 if step_size is None else step_size
    x = tf.convert_to_tensor(x, tf.float32)
    x_adv = tf.identity(x)
    for _ in range(steps):
        with tf.GradientTape() as tape:
            tape.watch(x_adv)
            loss = keras.losses.sparse_categorical_crossentropy(
                labels, model_fn(x_adv), from_logits=True
            )
        x_adv = x_adv + step_size * tf.sign(tape.gradient(loss, x_adv))
        x_adv = tf.clip_by_value(tf.clip_by_value(x_adv, x - eps, x + eps), 0.0, 1.0)
    return x_adv


@contextlib.contextmanager
def stand_in_attacks():
    """The evaluations' PGD is the stand-in above while the context is open (the registered
    `pgd<K>` evaluation attacks call `dgad_tf.attacks.pgd_ce` when they run)."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(attacks, "pgd_ce", _stand_in_pgd_ce)
        yield


def keras_probabilities(model, x_uint8):
    """Softmax of the Keras model's logits on uint8 images, in float64."""
    logits = model(x_uint8.astype(np.float32) / 255.0, training=False).numpy().astype(np.float64)
    exp = np.exp(logits - logits.max(axis=1, keepdims=True))
    return exp / exp.sum(axis=1, keepdims=True)


def write_broken_model(path, kind, model):
    """Put at `path` what a `.keras` file must not be: by `kind`, nothing ("missing"), a folder,
    a text file or the first half of `model`'s `.keras` archive ("truncated")."""
    if kind == "folder":
        path.mkdir()
    elif kind == "text":
        path.write_text("not a model")
    elif kind == "truncated":
        model.save(path)
        path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
