"""`python -m dgad_tf.compare --plan`: a study's cells, what they share, and what it would cost.

Nothing is trained and nothing is written. The cost comes from a short timed probe of the real
networks on this machine: a few train steps of each distinct method (after one untimed step
that builds the graph) and the student's forward and input-gradient passes that the evaluation
attacks are made of. A probe at the configured batch size can take minutes on a CPU for large
networks, so the probe batch is the configured one only when `probe_batch` allows it; the time
per image is then scaled linearly to the configured batch size, and the plan says so.

The protocol's attacks are costed in those passes: PGD-K is K gradient passes and a forward per
clean-correct image; standard AutoAttack runs APGD-CE (100 iterations) on every clean-correct
image, then APGD-T (9 x 100), FAB-T (9 x 100) and Square (5,000 queries) only on the images
still robust, so its cost is given as a range: every image falls to APGD-CE, or none falls.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import platform
import time

import numpy as np

log = logging.getLogger(__name__)

# Used only when the data cannot be loaded here (a TFDS dataset not downloaded): the datasets'
# published split sizes, image shape and classes.
PUBLISHED_DATA = {
    "cifar10": (50_000, 10_000, (32, 32, 3), 10),
    "cifar100": (50_000, 10_000, (32, 32, 3), 100),
}
# Standard AutoAttack's passes per robust image (`dgad_tf.autoattack.runner`): gradient passes
# of APGD-CE, APGD-T (9 targets x 100), FAB-T (9 x 100); forward passes of Square.
AUTOATTACK_APGD_CE = 100
AUTOATTACK_REST_GRADIENTS = 9 * 100 + 9 * 100
AUTOATTACK_SQUARE_FORWARDS = 5000


@dataclasses.dataclass(frozen=True)
class DataFacts:
    """What the plan needs of the data: sizes, image shape, classes and where they came from."""

    train: int
    test: int
    image_shape: tuple
    num_classes: int
    source: str


def data_facts(base) -> DataFacts:
    """The study's data sizes, without downloading anything.

    A TFDS dataset is read from its prepared copy when there is one, else from the published
    sizes of a known set; any other source is loaded.
    """
    from dgad_tf import build
    from dgad_tf.rundir import RunError

    d = base.data
    if d.source != "tfds":
        splits = build.load_data(base)
        return DataFacts(
            len(splits.train.y),
            len(splits.test.y),
            tuple(splits.image_shape),
            splits.num_classes,
            "loaded",
        )
    import tensorflow_datasets as tfds

    builder = tfds.builder(d.name, data_dir=d.data_dir)
    if builder.is_prepared():
        train = builder.info.splits["train"].num_examples
        test = builder.info.splits["test"].num_examples
        image, label = builder.info.supervised_keys
        shape = tuple(builder.info.features[image].shape)
        classes = builder.info.features[label].num_classes
        source = f"the prepared TFDS copy in {builder.data_dir}"
    elif d.name in PUBLISHED_DATA:
        train, test, shape, classes = PUBLISHED_DATA[d.name]
        source = f"{d.name}'s published sizes: the dataset is not downloaded here"
    else:
        raise RunError(
            f"data: TFDS dataset {d.name!r} is not prepared here, so --plan cannot size it; "
            "download it first (python -m dgad_tf.fit downloads it)"
        )
    if d.train_limit:
        train = min(train, d.train_limit)
    if d.test_limit:
        test = min(test, d.test_limit)
    if d.val_fraction:
        train -= int(round(train * d.val_fraction))
    return DataFacts(train, test, shape, classes, source)


def _duration(seconds: float) -> str:
    if seconds < 120:
        return f"{seconds:.0f} s"
    if seconds < 2 * 3600:
        return f"{seconds / 60:.0f} min"
    if seconds < 2 * 86400:
        return f"{seconds / 3600:.1f} h"
    return f"{seconds / 86400:.1f} days"


class _FakeSplits:
    """The two facts `build.build_network` reads from the data."""

    def __init__(self, facts: DataFacts):
        self.num_classes = facts.num_classes
        self.image_shape = facts.image_shape


def _timed(fn, repeats: int) -> float:
    fn()  # builds the graph: not timed
    start = time.perf_counter()
    for _ in range(repeats):
        fn()
    return (time.perf_counter() - start) / repeats


def probe(study, facts: DataFacts, probe_batch: int, repeats: int = 2) -> dict:
    """Seconds per image of each distinct method's train step and of the student's passes."""
    import keras
    import tensorflow as tf

    from dgad_tf import build, models

    splits = _FakeSplits(facts)
    rng = np.random.default_rng(0)
    x = rng.random((probe_batch, *facts.image_shape)).astype(np.float32)
    y = rng.integers(0, facts.num_classes, probe_batch).astype(np.int32)
    teacher = None
    if study.needs_teacher:
        path = study.teacher_path
        teacher = (
            models.load_model(path)
            if path.exists()
            else build.build_network(study.base, study.base.model.teacher, splits)
        )
        teacher.trainable = False
    train_step = {}
    for cell in study.cells():
        key = (cell.cfg.method.name, cell.cfg.method.reference_forwards)
        if key in train_step:
            continue
        keras.utils.set_random_seed(0)
        student = build.build_network(cell.cfg, cell.cfg.model.student, splits)
        needs = cell.cfg.method.loss.needs_teacher
        distiller = build.build_distiller(
            cell.cfg,
            student=student,
            teacher=teacher if needs else None,
            steps_per_epoch=1,
        )
        seconds = _timed(lambda: distiller.train_on_batch(x, y), repeats)
        train_step[key] = seconds / probe_batch
    xt, yt = tf.constant(x), tf.constant(y)

    def passes(network) -> tuple[float, float]:
        @tf.function
        def gradient(xb, yb):
            with tf.GradientTape() as tape:
                tape.watch(xb)
                loss = keras.losses.sparse_categorical_crossentropy(
                    yb, network(xb, training=False), from_logits=True
                )
            return tape.gradient(loss, xb)

        @tf.function
        def forward(xb):
            return network(xb, training=False)

        return (
            _timed(lambda: gradient(xt, yt).numpy(), repeats) / probe_batch,
            _timed(lambda: forward(xt).numpy(), repeats) / probe_batch,
        )

    student = build.build_network(study.base, study.base.model.student, splits)
    return {
        "train_step": train_step,
        "student": passes(student),
        "teacher": passes(teacher) if teacher is not None else None,
        "batch": probe_batch,
    }


def machine() -> str:
    """The CPU this plan was timed on, as `lscpu` names it, and its logical cores."""
    name = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    name = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    return f"{name}, {os.cpu_count()} logical cores"


def _evaluation_cost(protocol, gradient: float, forward: float):
    """(low, high, descriptions) seconds of the protocol's attacks on one model."""
    n = protocol.n
    low = high = n * forward
    parts = [f"clean {_duration(n * forward)}"]
    for attack in protocol.robust_attacks:
        if attack.startswith("pgd"):
            cost = n * (int(attack[3:]) * gradient + forward)
            low, high = low + cost, high + cost
            parts.append(f"{attack} at most {_duration(cost)}")
        elif attack == "autoattack":
            first = n * AUTOATTACK_APGD_CE * gradient
            every = first + n * (
                AUTOATTACK_REST_GRADIENTS * gradient + AUTOATTACK_SQUARE_FORWARDS * forward
            )
            low, high = low + first, high + every
            parts.append(
                f"autoattack {_duration(first)} (every image falls to APGD-CE) to "
                f"{_duration(every)} (none falls)"
            )
        else:
            parts.append(f"{attack} not costed")
    return low, high, parts


def plan_text(study, *, probe_batch: int = 4, repeats: int = 1) -> str:
    """The plan of `study` as printed by `python -m dgad_tf.compare --plan`.

    Args:
        study: the parsed study.
        probe_batch: largest batch the timed probe runs (the configured batch size when
            smaller). Defaults to 4.
        repeats: timed steps per probe, after one untimed step. Defaults to 1.
    """
    from dgad_tf import build
    from dgad_tf.study import CELL_EVAL_FILE, TEACHER_EVAL_FILE

    base, protocol = study.base, study.protocol
    facts = data_facts(base)
    cells = study.cells()
    done = [c for c in cells if (c.folder / CELL_EVAL_FILE).exists()]
    t, a = base.train, base.attack
    teacher = "no teacher"
    if study.needs_teacher:
        path = study.teacher_path
        teacher = f"{base.model.teacher} from {path}" + (
            ""
            if path.exists()
            else " (not there yet: convert or train it first, see README; the probe times a "
            "freshly built one, which costs the same)"
        )
    lines = [
        f"Study {study.folder}: {len(study.methods)} methods x {len(study.seeds)} seeds = "
        f"{len(cells)} cells ({len(done)} finished here, {len(cells) - len(done)} to train).",
        "",
        "Shared by every cell:",
        f"  data        {base.data.source} {base.data.name or base.data.path or ''}: "
        f"{facts.train:,} training images ({facts.source})",
        f"  teacher     {teacher}",
        f"  student     {base.model.student}",
        f"  training    {t.epochs} epochs, batch {t.batch_size}, lr {base.optimizer.lr}, "
        f"train.select={t.select}; training attack {a.steps} steps of {a.step_size:.4g} "
        f"at eps {a.eps:.4g}",
        f"  protocol    {', '.join(protocol.attacks)} at eps {protocol.eps:.4g} on the first "
        f"{protocol.n:,} of {facts.test:,} test images, attack seed {protocol.seed}",
    ]
    if study.primary:
        p = study.primary
        lines.append(f"  primary     {p['method']} - {p['versus']} on {p['attack']}")
    lines += ["", "Cells (each differs from the base only by its method and these overrides):"]
    for cell in cells:
        state = "finished" if cell in done else "to train"
        sets = " ".join(cell.entry.overrides) or "-"
        lines.append(
            f"  {cell.folder.name:<28} method {cell.entry.method:<8} seed {cell.seed}  "
            f"{sets}  [{state}]"
        )
    batch = min(probe_batch, t.batch_size)
    measured = probe(study, facts, batch, repeats)
    steps = build.steps_per_epoch_for(base, facts.train)
    images_per_cell = steps * t.batch_size * t.epochs
    lines += [
        "",
        f"Cost, from a timed probe on this machine ({machine()}) at batch {batch}"
        + (
            ""
            if batch == t.batch_size
            else f", scaled linearly to batch {t.batch_size} (larger batches usually run "
            "faster per image, so this leans high)"
        )
        + ":",
    ]
    train_total = 0.0
    for cell in cells:
        if cell in done:
            continue
        per_image = measured["train_step"][
            (cell.cfg.method.name, cell.cfg.method.reference_forwards)
        ]
        train_total += per_image * images_per_cell
    for (method, forwards), per_image in measured["train_step"].items():
        lines.append(
            f"  train step  {method}{' (reference forwards)' if forwards else ''}: "
            f"{per_image * t.batch_size:.2f} s per batch of {t.batch_size}; "
            f"{_duration(per_image * images_per_cell)} per cell "
            f"({steps:,} steps x {t.epochs} epochs)"
        )
    evaluations = [("student", len(cells) - len(done), measured["student"])]
    if study.needs_teacher and not (study.folder / TEACHER_EVAL_FILE).exists():
        evaluations.append(("teacher", 1, measured["teacher"]))
    low_total = high_total = 0.0
    for who, count, (gradient, forward) in evaluations:
        low, high, parts = _evaluation_cost(protocol, gradient, forward)
        lines.append(f"  evaluation of each {who}: " + "; ".join(parts))
        low_total, high_total = low_total + count * low, high_total + count * high
    lines.append(
        f"  total       training {_duration(train_total)} + evaluation {_duration(low_total)} "
        f"to {_duration(high_total)}, on this machine, one cell after another"
    )
    return "\n".join(lines) + "\n"
