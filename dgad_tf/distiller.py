"""`AdversarialDistiller`: one Keras model whose `train_step` is a whole adversarial-distillation
step.

The step, for every method (DGAD and the baselines differ only in the attack objective and the
loss, both looked up in `METHOD_SPECS`):

1. attack: L-inf PGD on the training batch, both networks in inference mode (ARD's reference
   attack with the student in training mode when `reference_forwards` is on);
2. teacher forward in inference mode, no gradient;
3. student forward in training mode, clean and adversarial batches in separate calls (in the
   method's reference order when `reference_forwards` is on; see `MethodSpec`);
4. method loss, reduced over the *global* batch (correct under any number of replicas);
5. gradients of the student's trainable variables only, applied by the optimiser.

`test_step` reports clean accuracy and PGD robust accuracy (cross-entropy, uniform start, step
eps/4) so that `val_robust_accuracy` is an ordinary Keras metric that checkpoints, early stopping,
TensorBoard and KerasTuner all read.
"""

from __future__ import annotations

import dataclasses
from typing import Optional

import keras
import numpy as np
import tensorflow as tf

from dgad_tf import attacks, distribute
from dgad_tf.config import METHODS, MethodConfig, resolved_attack_init, validate_method
from dgad_tf.methods import ADV, CLEAN, METHOD_SPECS, Forward, StepContext

# Loss-dict entries that are counts over the local batch; logged as fractions of the batch.
_COUNT_KEYS = {
    "num_misclassified": "misclassified_fraction",
    "num_swapped_clean": "swap_rate_clean",
    "num_swapped_adv": "swap_rate_adv",
}


class AdversarialDistiller(keras.Model):
    """A trainable student, an optional frozen teacher, and the adversarial training step.

    Calling the distiller calls the student. Only the student's variables receive gradients; the
    teacher is frozen in `__init__` and always run in inference mode.

    Args:
        student: Keras model mapping [0,1] images to logits.
        teacher: frozen Keras model with the same input and number of classes, required by
            "ard", "rslad", "adaad" and "dgad". Defaults to None.
        method: one of `dgad_tf.config.METHODS`. Defaults to "dgad".
        eps: L-inf radius of the training attack. Defaults to 8/255.
        step_size: PGD step of the training attack. Defaults to 2/255.
        steps: PGD iterations of the training attack. Defaults to 10.
        attack_init: "auto", "uniform", "gaussian" or "none". Defaults to "auto".
        init_std: std of the Gaussian start. Defaults to 0.001.
        val_robust_steps: PGD steps of the robust accuracy in `test_step` (0: clean only).
            Defaults to 10.
        batch_size: the configured global batch size, which the reference MobileNetV2
            weighting divides by. Defaults to None (each batch's own size).
        seed: seed of the attacks' random starts (stateless, keyed by the optimizer's step and
            the replica, so a resumed run repeats the uninterrupted run's draws). Defaults to 0.
        **method_options: the loss options of `dgad_tf.config.MethodConfig` (beta, use_map,
            use_els, distill_weight, dgad_weighting, trades_beta, ard_alpha, ard_temperature,
            adaad_alpha, kl_reduction, kl_scale, rslad_log_epsilon, reference_forwards, iad_*),
            with that dataclass's defaults.

    Example:
        >>> distiller = AdversarialDistiller(student, teacher, method="dgad", beta=1.0)
        >>> distiller.compile(optimizer=TorchSGD(0.1))
        >>> distiller.fit(train_ds, validation_data=val_ds, epochs=200)
    """

    def __init__(
        self,
        student: keras.Model,
        teacher: Optional[keras.Model] = None,
        *,
        method: str = "dgad",
        eps: float = 8 / 255,
        step_size: float = 2 / 255,
        steps: int = 10,
        attack_init: str = "auto",
        init_std: float = 0.001,
        val_robust_steps: int = 10,
        batch_size: Optional[int] = None,
        seed: int = 0,
        name=None,
        **method_options,
    ):
        super().__init__(name=name)
        if method not in METHOD_SPECS:
            raise ValueError(
                f"`method` must be one of {', '.join(METHODS)}; received method={method!r}"
            )
        if not 0.0 <= eps <= 1.0:
            raise ValueError(f"`eps` must be in [0, 1]; received eps={eps}")
        if steps < 0:
            raise ValueError(f"`steps` must be >= 0; received steps={steps}")
        unknown = sorted(
            set(method_options) - {f.name for f in dataclasses.fields(MethodConfig)} - {"name"}
        )
        if unknown or "name" in method_options:
            raise TypeError(
                f"unknown method option {(unknown or ['name'])[0]!r}; the options are "
                "the fields of dgad_tf.config.MethodConfig other than name"
            )
        self.options = validate_method(MethodConfig(name=method, **method_options))
        self.spec = METHOD_SPECS[method]
        if self.spec.needs_teacher and teacher is None:
            raise ValueError(f"method {method!r} distils from a teacher; received teacher=None")
        if teacher is not None:
            _check_compatible(student, teacher)
            teacher.trainable = False
        self.student = student
        self.teacher = teacher if self.spec.needs_teacher else None
        self.method = method
        self.eps = float(eps)
        self.step_size = float(step_size)
        self.steps = int(steps)
        self.reference_forwards = self.options.reference_forwards
        self.attack_init = resolved_attack_init(method, attack_init, self.reference_forwards)
        self.init_std = float(init_std)
        self.val_robust_steps = int(val_robust_steps)
        self.batch_size = batch_size
        self.seed = int(seed)
        # The epoch Keras is training (set by `fit`); IAD's introspection starts after warm-up.
        self.epoch = tf.Variable(0, trainable=False, dtype=tf.int64, name="epoch")

        self._loss_keys = self._discover_loss_keys(student.output_shape[-1])
        names = ["loss"] + [k for k in self._loss_keys if k != "total"]
        names = [_COUNT_KEYS.get(k, k) for k in names]
        names += ["student_clean_accuracy", "student_adv_accuracy"]
        if self.teacher is not None:
            names += ["teacher_clean_accuracy", "teacher_adv_accuracy"]
        self._train_trackers = {n: keras.metrics.Mean(name=n) for n in names}
        self._test_trackers = {
            n: keras.metrics.Mean(name=n) for n in ("clean_accuracy", "robust_accuracy")
        }

    def _step_context(self) -> StepContext:
        introspection = tf.cast(self.epoch >= self.options.iad_warmup_epochs, tf.float32)
        return StepContext(introspection=introspection, batch_size=self.batch_size)

    def _discover_loss_keys(self, num_classes: int) -> list[str]:
        # The loss dict's keys define which metrics exist; they must be known before tracing.
        logits = tf.zeros([2, num_classes])
        dummy = dict(
            s_clean=logits, s_adv=logits, t_clean=logits, t_adv=logits, y=tf.zeros([2], tf.int32)
        )
        context = StepContext(introspection=tf.constant(0.0), batch_size=None)
        return sorted(self.spec.loss(dummy, self.options, None, context).keys())

    def fit(self, *args, callbacks=None, **kwargs):
        """`keras.Model.fit`, keeping `self.epoch` at the epoch being trained (also on resume)."""
        callbacks = list(callbacks or []) + [_EpochVariable(self.epoch)]
        return super().fit(*args, callbacks=callbacks, **kwargs)

    def _maybe_symbolic_build(self, iterator=None, data_batch=None):
        # Under a distribution strategy Keras 3 reduces one real batch across replicas only to
        # read its shapes, which fails under MultiWorkerMirroredStrategy
        # (keras-team/keras#20585). The student already knows the shapes.
        if iterator is not None:
            shape = (1,) + tuple(self.student.input_shape[1:])
            data_batch = (np.zeros(shape, np.float32), np.zeros((1,), np.int64))
        super()._maybe_symbolic_build(data_batch=data_batch)

    @property
    def metrics(self):
        return list(self._train_trackers.values()) + list(self._test_trackers.values())

    def call(self, inputs, training=False):
        return self.student(inputs, training=training)

    # ------------------------------------------------------------------ attack

    def _student_fn(self, x):
        return self.student(x, training=False)

    def _student_train_mode_fn(self, x):
        return self.student(x, training=True)

    def _teacher_fn(self, x):
        return self.teacher(x, training=False)

    def adversarial_examples(self, x, y, seed=None):
        """The method's training attack on (x, y); both networks in inference mode.

        `seed`: None (global generator) or a `[2]` tensor for a stateless random start.
        """
        kind = self.spec.attack
        if kind == "none" or self.steps == 0 and self.attack_init == "none":
            return x
        if kind == "ce":
            # ARD's code attacks with the student in training mode: batch statistics normalise
            # and every attack step moves the moving averages.
            train_mode = self.reference_forwards and self.spec.reference_train_mode_attack
            objective = attacks.ce_objective(
                self._student_train_mode_fn if train_mode else self._student_fn, y
            )
        elif kind == "kl_teacher":
            objective = attacks.kl_objective(self._teacher_fn, self._student_fn)
        elif kind == "kl_student_clean":
            objective = attacks.kl_to_fixed_objective(self._student_fn(x), self._student_fn)
        else:  # kl_teacher_clean
            objective = attacks.kl_to_fixed_objective(self._teacher_fn(x), self._student_fn)
        return attacks.pgd(
            x,
            objective,
            eps=self.eps,
            step_size=self.step_size,
            steps=self.steps,
            init=self.attack_init,
            init_std=self.init_std,
            seed=seed,
        )

    # ------------------------------------------------------------------ steps

    def train_step(self, data):
        x, y = data[0], data[1]
        y = tf.cast(tf.reshape(y, [-1]), tf.int32)
        replica_context = tf.distribute.get_replica_context()
        replicas = replica_context.num_replicas_in_sync
        local_batch = tf.shape(y)[0]
        # Every replica divides its per-sample sums by the global batch, so the summed gradients
        # across replicas equal those of one device on the whole batch. A kept last partial batch
        # is split unevenly across replicas, so the global size is the sum of the local ones,
        # not local_batch * replicas.
        global_batch = local_batch
        if replicas > 1:
            global_batch = replica_context.all_reduce(
                tf.distribute.ReduceOp.SUM, tf.cast(local_batch, tf.float32)
            )

        # 1. attack (inference mode; gradients flow to the input only). Its random start is keyed
        # by (train seed, step, replica), so a resumed run draws what the uninterrupted one did.
        step_seed = tf.stack(
            [
                tf.constant(self.seed, tf.int64),
                tf.cast(self.optimizer.iterations, tf.int64) * replicas
                + _replica_id(replica_context),
            ]
        )
        x_adv = tf.stop_gradient(self.adversarial_examples(x, y, seed=step_seed))

        # 2. teacher forward (inference mode, no gradient) -- before the tape, it needs none
        forwards = {"y": y}
        if self.teacher is not None:
            forwards["t_clean"] = tf.stop_gradient(self.teacher(x, training=False))
            forwards["t_adv"] = tf.stop_gradient(self.teacher(x_adv, training=False))

        with tf.GradientTape() as tape:
            # 3. student forwards in training mode, clean and adversarial in separate calls, in
            # the reference code's order when asked (the order moves batch-norm statistics)
            inputs = {"clean": x, "adv": x_adv}
            for forward in self._forward_order():
                output = self.student(inputs[forward.kind], training=True)
                # An unused reference forward only moves batch-norm statistics; its output
                # serves the accuracy metric when the loss has no clean forward of its own.
                if forward.used or "s_" + forward.kind not in forwards:
                    forwards["s_" + forward.kind] = output
            # IAD's and AdaIAD's reference code calls the student once more after the warm-up
            # (its introspection term); in training mode on this batch the output equals the
            # first, so only the batch-norm statistics it moves count.
            later = self.spec.forwards_added_after_warmup if self.reference_forwards else ()
            if later:

                def later_forwards():
                    for forward in later:
                        self.student(inputs[forward.kind], training=True)
                    return tf.constant(0.0)

                tf.cond(
                    self._step_context().introspection > 0,
                    later_forwards,
                    lambda: tf.constant(0.0),
                )
            # 4. method loss over the global batch
            terms = self.spec.loss(forwards, self.options, global_batch, self._step_context())
            # Scaled for mixed_float16 (the LossScaleOptimizer unscales in `apply`); else as is.
            loss = self.optimizer.scale_loss(terms["total"])

        # 5. gradients of the student's variables only
        variables = self.student.trainable_variables
        grads = tape.gradient(loss, variables)
        # Keras 3 all-reduces the gradients by SUM across replicas before the update.
        self.optimizer.apply(grads, variables)
        if replicas > 1:
            self._average_replica_statistics()

        self._update_train_metrics(terms, forwards, x, y, local_batch, replicas)
        return _replica_results(self._train_trackers)

    def _forward_order(self) -> tuple[Forward, ...]:
        if self.reference_forwards:
            return self.spec.reference_forwards
        return ((CLEAN,) if self.spec.student_clean else ()) + (
            (ADV,) if self.spec.attack != "none" else ()
        )

    def _average_replica_statistics(self):
        # Keras 3 lets every replica update its own copy of the batch-norm moving statistics
        # (they would drift apart and only replica 0's would be saved). Averaging them after each
        # step gives every copy the mean of the replicas' updates; the update being linear, that
        # is what averaging the copies at read time would give.
        # Integer state (e.g. random-seed counters) is equal on every replica and stays as is.
        statistics = [
            v for v in self.student.non_trainable_variables if keras.backend.is_float_dtype(v.dtype)
        ]
        if not statistics:
            return
        context = tf.distribute.get_replica_context()
        # One packed all-reduce: MultiWorkerMirroredStrategy fails on a list of variable reads
        # ("destinations can not be empty") and one call is cheaper anyway.
        packed = tf.concat([tf.reshape(tf.cast(v, tf.float32), [-1]) for v in statistics], 0)
        averaged = context.all_reduce(tf.distribute.ReduceOp.SUM, packed) / tf.cast(
            context.num_replicas_in_sync, tf.float32
        )
        sizes = [int(np.prod(v.shape)) for v in statistics]
        for variable, value in zip(statistics, tf.split(averaged, sizes)):
            variable.assign(tf.cast(tf.reshape(value, variable.shape), variable.dtype))

    def _update_train_metrics(self, terms, forwards, x, y, local_batch, replicas):
        weight = tf.cast(local_batch, tf.float32)
        # DGAD's kl_clean / kl_adv are means over this replica's part of its partition; weighted
        # by the part's size they average to the mean over the partition of the whole batch.
        partition_sizes = {}
        if "num_misclassified" in terms:
            misclassified = tf.cast(terms["num_misclassified"], tf.float32)
            partition_sizes = {"kl_clean": misclassified, "kl_adv": weight - misclassified}
        for key, value in terms.items():
            if key in _COUNT_KEYS:
                self._train_trackers[_COUNT_KEYS[key]].update_state(
                    tf.cast(value, tf.float32) / weight, sample_weight=weight
                )
            elif key in partition_sizes:
                self._train_trackers[key].update_state(
                    tf.cast(value, tf.float32), sample_weight=partition_sizes[key]
                )
            elif key == "total":
                # `total` is this replica's share of the global mean; the mean of
                # replicas·share over replicas is the global loss (likewise every other term).
                self._train_trackers["loss"].update_state(
                    tf.cast(value, tf.float32) * tf.cast(replicas, tf.float32)
                )
            else:
                self._train_trackers[key].update_state(
                    tf.cast(value, tf.float32) * tf.cast(replicas, tf.float32)
                )

        def correct(logits):
            return tf.cast(tf.equal(tf.argmax(logits, -1, output_type=tf.int32), y), tf.float32)

        s_clean = forwards.get("s_clean")
        if s_clean is None:
            # PGD-AT's loss has no clean forward; one inference pass (about 1/33 of a 10-step
            # PGD-AT step) buys the logged student_clean_accuracy.
            s_clean = self.student(x, training=False)
        self._train_trackers["student_clean_accuracy"].update_state(correct(s_clean))
        s_adv = forwards.get("s_adv", s_clean)
        self._train_trackers["student_adv_accuracy"].update_state(correct(s_adv))
        if self.teacher is not None:
            self._train_trackers["teacher_clean_accuracy"].update_state(
                correct(forwards["t_clean"])
            )
            self._train_trackers["teacher_adv_accuracy"].update_state(correct(forwards["t_adv"]))

    def test_step(self, data):
        x, y = data[0], data[1]
        y = tf.cast(tf.reshape(y, [-1]), tf.int32)
        logits = self.student(x, training=False)
        clean = tf.cast(tf.equal(tf.argmax(logits, -1, output_type=tf.int32), y), tf.float32)
        self._test_trackers["clean_accuracy"].update_state(clean)
        if self.val_robust_steps > 0 and self.eps > 0:
            # A fixed stateless start: the same model always scores the same, so the best
            # checkpoint a resumed run keeps is the one the uninterrupted run kept.
            x_adv = attacks.pgd(
                x,
                attacks.ce_objective(self._student_fn, y),
                eps=self.eps,
                step_size=self.eps / 4,
                steps=self.val_robust_steps,
                init="uniform",
                seed=self.seed,
            )
            adv_logits = self.student(x_adv, training=False)
            # A point counts as robust only if it is also classified right when clean.
            robust = clean * tf.cast(
                tf.equal(tf.argmax(adv_logits, -1, output_type=tf.int32), y), tf.float32
            )
        else:
            robust = clean
        self._test_trackers["robust_accuracy"].update_state(robust)
        return _replica_results(self._test_trackers)


def _replica_id(context) -> tf.Tensor:
    replica = 0 if context is None else context.replica_id_in_sync_group
    return tf.cast(replica, tf.int64)


def _replica_results(trackers: dict) -> dict:
    """Every `Mean` tracker's result over all replicas, returned identically by each replica.

    Keras averages the values the replicas return; a mean of per-replica ratios is not the ratio
    of the sums when replicas weigh differently (partition sizes, an uneven last batch).
    """
    context = tf.distribute.get_replica_context()
    if context is None or context.num_replicas_in_sync == 1:
        return {name: m.result() for name, m in trackers.items()}
    sums = context.all_reduce(
        tf.distribute.ReduceOp.SUM,
        tf.stack(
            [
                tf.stack([tf.convert_to_tensor(m.total), tf.convert_to_tensor(m.count)])
                for m in trackers.values()
            ]
        ),
    )
    results = {
        name: tf.math.divide_no_nan(sums[i, 0], sums[i, 1]) for i, name in enumerate(trackers)
    }
    if distribute.is_multi_worker(tf.distribute.get_strategy()):
        # Keras 3 reduces multi-worker logs with `strategy.reduce(..., axis=0)`, which a scalar
        # lacks; one-element vectors reduce to the same scalar.
        results = {name: tf.reshape(value, [1]) for name, value in results.items()}
    return results


def _check_compatible(student: keras.Model, teacher: keras.Model):
    s_in, t_in = tuple(student.input_shape[1:]), tuple(teacher.input_shape[1:])
    if s_in != t_in:
        raise ValueError(f"teacher input shape {t_in} differs from the student's {s_in}")
    s_out, t_out = student.output_shape[-1], teacher.output_shape[-1]
    if s_out != t_out:
        raise ValueError(f"teacher has {t_out} classes but the student has {s_out}")


class _EpochVariable(keras.callbacks.Callback):
    """Keeps a variable at the epoch `fit` is training (0-based, so a resumed run is right too)."""

    def __init__(self, variable: tf.Variable):
        super().__init__()
        self._variable = variable

    def on_epoch_begin(self, epoch, logs=None):
        self._variable.assign(epoch)
