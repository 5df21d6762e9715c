"""`AdversarialDistiller`: one Keras model whose `train_step` is a whole adversarial-distillation
step.

The step, for every method (DGAD and the baselines differ only in their loss object, which also
says what the attack ascends and which forwards run; see `dgad_tf.losses.MethodLoss`):

1. attack: L-inf PGD on the training batch, both networks in inference mode (with
   `reference_forwards`, ARD and IAD attack with the student in training mode, as their
   reference code does);
2. teacher forward in inference mode, no gradient;
3. student forward in training mode, clean and adversarial batches in separate calls (in the
   method's reference order when `reference_forwards` is on; `MethodLoss.student_forwards`);
4. method loss, reduced over the *global* batch (correct under any number of replicas);
5. gradients of the student's trainable variables only, applied by the optimiser.

`test_step` reports clean accuracy and PGD robust accuracy (cross-entropy, uniform start, step
eps/4) so that `val_robust_accuracy` is an ordinary Keras metric that checkpoints, early stopping,
TensorBoard and KerasTuner all read.
"""

from __future__ import annotations

import copy
import inspect
from typing import Optional

import keras
import numpy as np
import tensorflow as tf

from dgad_tf import attacks, batch_checks, distribute, losses
from dgad_tf.losses import MethodLoss

# The built-in method losses (and IGDM, which wraps one) travel in a distiller's config under
# the package "dgad_tf".
for _loss_class in (*losses.METHOD_LOSSES.values(), losses.IGDM):
    keras.saving.register_keras_serializable(package="dgad_tf")(_loss_class)

# Loss-dict entries that are counts over the local batch; logged as fractions of the batch.
_COUNT_KEYS = {
    "num_misclassified": "misclassified_fraction",
    "num_swapped_clean": "swap_rate_clean",
    "num_swapped_adv": "swap_rate_adv",
}

# Keywords of the earlier `AdversarialDistiller(student, teacher, method=..., eps=..., **options)`.
_OLD_KEYWORDS = {"method", "eps", "step_size", "steps", "attack_init", "init_std", "batch_size"} | {
    "name",
    "beta",
    "use_map",
    "use_els",
    "distill_weight",
    "trades_beta",
    "ard_alpha",
    "ard_temperature",
    "adaad_alpha",
    "dgad_weighting",
    "kl_reduction",
    "kl_scale",
    "rslad_log_epsilon",
    "iad_alpha",
    "iad_beta",
    "iad_temperature",
    "iad_warmup_epochs",
}


@keras.saving.register_keras_serializable(package="dgad_tf")
class AdversarialDistiller(keras.Model):
    """A trainable student, an optional frozen teacher, a method's loss and the training attack.

    Calling the distiller calls the student. Only the student's variables receive gradients; the
    teacher is frozen in `__init__` and always run in inference mode. The networks are keyword
    arguments only (`keras.distillation.Distiller` takes them positionally as (teacher, student),
    so a positional call is refused rather than guessed).

    `fit` and `train_on_batch` take batches of (images in [0, 1], integer class labels); the
    images may be a one-entry dict keyed by the student's input name, `({"image": x}, y)`. The
    first batch the distiller trains on is checked once, before training
    (`dgad_tf.batch_checks`): the images' range, the labels, that both networks return logits
    rather than probabilities, and (a warning) that the teacher beats chance on it. `compile`
    takes the optimiser and Keras's execution options only: the loss is `loss`, the metrics are
    its terms and the accuracies. Sample weights and class weights are refused: every method's
    loss is its published formula, a sum over the batch divided by the global batch size.

    `save` writes a `.keras` file that `keras.saving.load_model` reads back compiled, with the
    optimiser's state (step count, momentum): `fit` on the loaded distiller continues as the
    saved one would have. `save_weights` / `load_weights` work before and after `fit`. To keep
    only the trained network, save the student (`dgad_tf.models.save_model(distiller.student,
    path)`).

    Args:
        teacher: frozen Keras model with the student's input shape and number of classes, for
            the losses that distil (DGAD, AdaAD, ARD, RSLAD, IAD, AdaIAD); None for Clean,
            PGDAT and TRADES. Defaults to None.
        student: the Keras model to train, mapping images in [0, 1] to logits.
        loss: the method's loss object: `dgad_tf.losses.DGAD(...)`, `AdaAD`, `TRADES`, `ARD`,
            `RSLAD`, `IAD`, `AdaIAD`, `PGDAT`, `Clean`, or a user's own
            `dgad_tf.losses.MethodLoss` subclass. The distiller asks it for everything
            about the method: teacher, attack objective, random start, forwards, logged terms.
        attack: the training attack, a `dgad_tf.attacks.PGD`. Defaults to None (`PGD()`:
            eps 8/255, step 2/255, 10 steps, the method's own random start).
        reference_forwards: run the student's forwards in the order and batch-norm modes of
            the method's reference code (docs/method.md §9.10): also ARD's and IAD's attack
            with the student in training mode, and PGD-AT's Gaussian start when `attack`'s
            start is "auto". Defaults to False.
        val_robust_steps: PGD steps of the robust accuracy in `test_step` (0: clean only).
            Defaults to 10.
        seed: seed of the attacks' random starts (stateless, keyed by the optimizer's step and
            the replica, so a resumed run repeats the uninterrupted run's draws). Defaults to 0.
        name: the model's name. Defaults to None ("adversarial_distiller").

    Example:
        >>> from dgad_tf.attacks import PGD
        >>> from dgad_tf.losses import DGAD
        >>> distiller = AdversarialDistiller(
        ...     teacher=teacher, student=student, loss=DGAD(beta=1.0), attack=PGD(eps=8 / 255))
        >>> distiller.compile(optimizer=TorchSGD(0.1))
        >>> distiller.fit(train_ds, validation_data=val_ds, epochs=200)
    """

    def __init__(
        self,
        *args,
        teacher: Optional[keras.Model] = None,
        student: Optional[keras.Model] = None,
        loss: Optional[MethodLoss] = None,
        attack: Optional[attacks.PGD] = None,
        reference_forwards: bool = False,
        val_robust_steps: int = 10,
        seed: int = 0,
        name: Optional[str] = None,
        **kwargs,
    ):
        _check_call(args, kwargs)
        super().__init__(name=name, **kwargs)
        _check_student(student)
        if loss is None:
            raise TypeError(
                "AdversarialDistiller needs `loss=`, the method's loss object, e.g. "
                "dgad_tf.losses.DGAD(beta=1.0)"
            )
        if not isinstance(loss, MethodLoss):
            classes = ", ".join(
                f"dgad_tf.losses.{c.__name__}" for c in losses.METHOD_LOSSES.values()
            )
            raise TypeError(
                f"`loss` must be one of {classes}, or your own subclass of "
                f"dgad_tf.losses.MethodLoss; received loss={loss!r}"
            )
        attack = attacks.PGD() if attack is None else attack
        if not isinstance(attack, attacks.PGD):
            raise TypeError(f"`attack` must be a dgad_tf.attacks.PGD; received attack={attack!r}")
        loss.validate_model_compatibility(teacher, student)
        if teacher is not None:
            teacher.trainable = False
        self.student = student
        self.teacher = teacher
        self.method_loss = loss
        self.attack = attack
        self.reference_forwards = bool(reference_forwards)
        self.attack_start = (
            loss.random_start(self.reference_forwards) if attack.start == "auto" else attack.start
        )
        self.val_robust_steps = int(val_robust_steps)
        self.seed = int(seed)
        # The epoch Keras is training (set by `fit`); IAD's introspection starts after warm-up.
        self.epoch = tf.Variable(0, trainable=False, dtype=tf.int64, name="epoch")
        self._first_batch_checked = False

        # The loss dict's keys define which metrics exist; they must be known before tracing.
        self._loss_keys = loss.logged_terms(student.output_shape[-1])
        names = ["loss"] + [k for k in self._loss_keys if k != "total"]
        names = [_COUNT_KEYS.get(k, k) for k in names]
        names += ["student_clean_accuracy", "student_adv_accuracy"]
        if self.teacher is not None:
            names += ["teacher_clean_accuracy", "teacher_adv_accuracy"]
        self._train_trackers = {n: keras.metrics.Mean(name=n) for n in names}
        self._test_trackers = {
            n: keras.metrics.Mean(name=n) for n in ("clean_accuracy", "robust_accuracy")
        }
        # The networks arrive built (their shapes are read above) and the distiller has no
        # weights of its own: built now, so that `save_weights` and `save` work before and after
        # `fit` as for any Keras model.
        self.built = True

    # ------------------------------------------------------------------ Keras API

    def get_config(self):
        config = super().get_config()
        serialize = keras.saving.serialize_keras_object
        config.update(
            teacher=None if self.teacher is None else serialize(self.teacher),
            student=serialize(self.student),
            loss=serialize(self.method_loss),
            attack=serialize(self.attack),
            reference_forwards=self.reference_forwards,
            val_robust_steps=self.val_robust_steps,
            seed=self.seed,
        )
        return config

    @classmethod
    def from_config(cls, config):
        config = copy.deepcopy(config)  # Keras's deserialisation consumes nested dicts
        for key in ("teacher", "student", "loss", "attack"):
            if config.get(key) is not None:
                config[key] = keras.saving.deserialize_keras_object(config[key])
        return cls(**config)

    def compile(self, optimizer="rmsprop", loss=None, loss_weights=None, metrics=None, **kwargs):
        """`keras.Model.compile` with the optimiser and execution options only.

        Raises:
            ValueError: for `loss`, `loss_weights`, `metrics` or `weighted_metrics`, which the
                distiller does not use.
        """
        given = {"loss": loss, "loss_weights": loss_weights, "metrics": metrics}
        given["weighted_metrics"] = kwargs.pop("weighted_metrics", None)
        unused = [key for key, value in given.items() if value is not None]
        if unused:
            raise ValueError(
                f"AdversarialDistiller.compile does not use {', '.join(unused)}: the training "
                f"loss is the `loss=` object given to the constructor ({self.method_loss!r}), "
                "and the logged metrics are its terms and the clean and adversarial accuracies; "
                "call compile(optimizer=...) with Keras's execution options only"
            )
        super().compile(optimizer=optimizer, **kwargs)

    def compile_from_config(self, config):
        """Compile from `get_compile_config()`, as `keras.saving.load_model` does on loading.

        Keras skips this for a model whose `compile` is overridden (the loaded model would be
        `compiled` without an optimizer); the optimiser's variables are created here so that
        the saved ones (its step count, momentum) load into them and a loaded distiller's
        `fit` continues where the saved one stopped.
        """
        self.compile(**keras.saving.deserialize_keras_object(config))
        self.optimizer.build(self.student.trainable_variables)

    def fit(self, *args, **kwargs):
        """`keras.Model.fit`, keeping `self.epoch` at the epoch being trained (also on resume).

        The first call that trains this distiller checks its first batch before training
        starts (`dgad_tf.batch_checks.check_first_batch`; later calls, a resumed or hyperband
        fit, check nothing).

        Raises:
            ValueError: for `sample_weight` or `class_weight`; on the first batch, images outside
                [0, 1], labels that are not class indices of the student's classes, or a teacher
                or student returning probabilities instead of logits.

        Warns:
            RuntimeWarning (also logged): the teacher is at chance level on the first batch.
        """
        bound = inspect.signature(keras.Model.fit).bind(self, *args, **kwargs)
        arguments = dict(bound.arguments)
        del arguments["self"]
        batch_checks.refuse_weights(arguments)
        if not self._first_batch_checked:
            arguments["x"], batch = batch_checks.first_batch(
                arguments.get("x"), arguments.get("y"), arguments.get("batch_size")
            )
            if batch is not None:
                self._check_first_batch(*batch)
        callbacks = list(arguments.get("callbacks") or []) + [_EpochVariable(self.epoch)]
        arguments["callbacks"] = callbacks
        return super().fit(**arguments)

    def train_on_batch(self, x, y=None, sample_weight=None, class_weight=None, return_dict=False):
        """`keras.Model.train_on_batch`; the first training call checks its batch as `fit` does."""
        batch_checks.refuse_weights({"sample_weight": sample_weight, "class_weight": class_weight})
        if not self._first_batch_checked:
            self._check_first_batch(x, y)
        return super().train_on_batch(x, y, return_dict=return_dict)

    def _check_first_batch(self, inputs, labels):
        batch_checks.check_first_batch(inputs, labels, student=self.student, teacher=self.teacher)
        self._first_batch_checked = True

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
        """The method's training attack on (x, y), the networks in inference mode.

        What it ascends is the loss's (`MethodLoss.attack_objective`). With `reference_forwards`,
        ARD and IAD attack with the student in training mode, as their reference code does
        (`MethodLoss.reference_train_mode_attack`): batch statistics normalise and every attack
        step moves the moving averages.

        `seed`: None (global generator) or a `[2]` tensor for a stateless random start.
        """
        loss = self.method_loss
        if loss.ascent is None or self.attack.steps == 0 and self.attack_start == "none":
            return x
        train_mode = self.reference_forwards and loss.reference_train_mode_attack
        objective = loss.attack_objective(
            x,
            y,
            student=self._student_train_mode_fn if train_mode else self._student_fn,
            teacher=None if self.teacher is None else self._teacher_fn,
        )
        if objective is None:
            return x
        return self.attack(x, objective, start=self.attack_start, seed=seed)

    # ------------------------------------------------------------------ steps

    def train_step(self, data):
        batch_checks.check_structure(data, self.student)  # Python, at tracing: not per step
        x, y = batch_checks.batch_images(data[0], self.student), data[1]
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

        # 1. attack (inference mode but for ARD's and IAD's reference forwards; gradients flow to
        # the input only). Its random start is keyed by (train seed, step, replica), so a resumed
        # run draws what the uninterrupted one did.
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
        order = self._forward_order()
        inputs = {"clean": x, "adv": x_adv}
        if any(forward.kind == "mirror" for forward in order):
            # IGDM's x - δ, δ = x' - x, not clipped to [0, 1] (HongsinLee/saad igdm.py:52-56)
            inputs["mirror"] = x - (x_adv - x)
        if self.teacher is not None:
            for kind, batch in inputs.items():
                forwards["t_" + kind] = tf.stop_gradient(self.teacher(batch, training=False))

        with tf.GradientTape() as tape:
            # 3. student forwards in training mode, clean and adversarial in separate calls, in
            # the reference code's order when asked (the order moves batch-norm statistics)
            for forward in order:
                output = self.student(inputs[forward.kind], training=True)
                # An unused reference forward only moves batch-norm statistics; its output
                # serves the accuracy metric when the loss has no clean forward of its own.
                if forward.used or "s_" + forward.kind not in forwards:
                    forwards["s_" + forward.kind] = output
            # IAD's and AdaIAD's reference code calls the student once more after the warm-up
            # (its introspection term); in training mode on this batch the output equals the
            # first, so only the batch-norm statistics it moves count.
            later = self.method_loss.forwards_added_after_warmup(self.reference_forwards)
            if later:

                def later_forwards():
                    for forward in later:
                        self.student(inputs[forward.kind], training=True)
                    return tf.constant(0.0)

                tf.cond(
                    self.method_loss.introspection(self.epoch) > 0,
                    later_forwards,
                    lambda: tf.constant(0.0),
                )
            # 4. method loss over the global batch
            terms = self.method_loss(forwards, global_batch_size=global_batch, epoch=self.epoch)
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

    def _forward_order(self) -> tuple[losses.Forward, ...]:
        return self.method_loss.student_forwards(self.reference_forwards)

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
        x, y = batch_checks.batch_images(data[0], self.student), data[1]
        y = tf.cast(tf.reshape(y, [-1]), tf.int32)
        logits = self.student(x, training=False)
        clean = tf.cast(tf.equal(tf.argmax(logits, -1, output_type=tf.int32), y), tf.float32)
        self._test_trackers["clean_accuracy"].update_state(clean)
        eps = self.attack.eps
        if self.val_robust_steps > 0 and eps > 0:
            # A fixed stateless start: the same model always scores the same, so the best
            # checkpoint a resumed run keeps is the one the uninterrupted run kept.
            x_adv = attacks.pgd(
                x,
                attacks.ce_objective(self._student_fn, y),
                eps=eps,
                step_size=eps / 4,
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


def _check_call(args, kwargs):
    """Refuse positional networks and the keywords of the earlier signature, saying what to use."""
    if args:
        raise TypeError(
            "AdversarialDistiller takes its networks by keyword: AdversarialDistiller("
            "teacher=..., student=..., loss=...); received "
            f"{len(args)} positional argument(s). keras.distillation.Distiller's order is "
            "(teacher, student) and this package's earlier one was (student, teacher), so a "
            "positional call is not guessed"
        )
    old = sorted(set(kwargs) & _OLD_KEYWORDS)
    if old:
        raise TypeError(
            f"AdversarialDistiller does not take {', '.join(old)}: give the method and its "
            "options as a loss object, loss=dgad_tf.losses.DGAD(beta=...) (or AdaAD, TRADES, "
            "ARD, RSLAD, IAD, AdaIAD, PGDAT, Clean), and the training attack as "
            "attack=dgad_tf.attacks.PGD(eps=..., step_size=..., steps=..., start=..., "
            "start_std=...)"
        )


def _check_student(student):
    if student is None:
        raise TypeError("AdversarialDistiller needs `student=`, the keras.Model to train")
    if not isinstance(student, keras.Model):
        raise TypeError(f"`student` must be a keras.Model; received {type(student).__name__}")
    if not student.trainable:
        raise ValueError(
            f"the student {student.name!r} has student.trainable=False, so nothing would be "
            "trained; set student.trainable = True (the distiller freezes the teacher itself)"
        )


class _EpochVariable(keras.callbacks.Callback):
    """Keeps a variable at the epoch `fit` is training (0-based, so a resumed run is right too)."""

    def __init__(self, variable: tf.Variable):
        super().__init__()
        self._variable = variable

    def on_epoch_begin(self, epoch, logs=None):
        self._variable.assign(epoch)
