"""What the runs of one command share, built once: the strategy, the data, a study's teacher.

A study trains many cells and a search many trials from the same data under the same strategy.
Each builds one `Context` (`build_context`) and every run it drives plans over it, so the data
is loaded and the strategy created once per command, not once per cell:
`dgad_tf.study.run_study` passes its context to every cell's `dgad_tf.run.run` (which builds
its own when it is given none, as `fit` does).

A study also loads its teacher file once (`SharedTeacher`, `dgad_tf.build.load_shared_teacher`)
and keeps it in its context (`with_teacher`). Loading a `.keras` file moves Keras's random
state: Keras seeds every initialiser it constructs with a draw from Python's `random`
(`make_default_seed`, keras/src/random/seed_generator.py), and `keras.utils.set_random_seed`
reseeds that stream, so what `fit` draws after loading its teacher (the student's initial
weights) depends on the load. One load's footprint is a count of those draws, the same whatever
the seed; it is measured on the shared load, and every run that would have loaded the file
again advances Python's `random` by that count instead (`SharedTeacher.replay_load`), so each
cell starts its student from the same initial weights as `python -m dgad_tf.fit` of its config.
A load whose footprint is not such a count (it moved NumPy's state or Keras's global
`SeedGenerator`) is not replayed: the runs then load the file themselves.

Example:
    >>> context = build_context(cfg)
    >>> report = run(cfg, context=context)
"""

from __future__ import annotations

import dataclasses
import logging
import pathlib
import random
from typing import TYPE_CHECKING, Any, Optional

import numpy as np

if TYPE_CHECKING:
    import keras

    from dgad_tf.config import Config
    from dgad_tf.data import DatasetSplits


log = logging.getLogger(__name__)

# Keras seeds an initialiser with `random.randint(1, int(1e9))` (`make_default_seed`).
_KERAS_SEED_MAX = int(1e9)
# More draws than any network of the zoo makes while it loads (a few per layer).
_MAX_DRAWS = 100_000


@dataclasses.dataclass(frozen=True)
class SharedTeacher:
    """A teacher file loaded once for several runs, and what one load of it draws.

    Args:
        model: the loaded, checked teacher (`dgad_tf.build.load_teacher`).
        path: the file it was loaded from.
        draws: Keras seeds (`random.randint(1, 10**9)` on Python's `random`) one load of the
            file draws, or None when the load moved another random state (the runs then load
            the file themselves).
    """

    model: keras.Model
    path: pathlib.Path
    draws: Optional[int]

    def serves(self, path) -> bool:
        """Whether a run that would load `path` may use `model` and `replay_load` instead."""
        return self.draws is not None and pathlib.Path(path).resolve() == self.path.resolve()

    def replay_load(self) -> None:
        """Leave Python's `random` where loading the file again would have left it."""
        for _ in range(self.draws):
            random.randint(1, _KERAS_SEED_MAX)


def random_state() -> tuple:
    """The random states loading a model may move: Python's, NumPy's, Keras's global seeds."""
    # `keras.random` ops without a seed draw from a global `SeedGenerator` created on first use
    # (keras/src/random/seed_generator.py `global_seed_generator`); reading it must not create it.
    from keras.src.backend.common import global_state
    from keras.src.random.seed_generator import GLOBAL_SEED_GENERATOR

    generator = global_state.get_global_attribute(GLOBAL_SEED_GENERATOR)
    seeds = None if generator is None else (id(generator), np.asarray(generator.state.value))
    return random.getstate(), np.random.get_state(), seeds


def seed_draws(before: tuple, after: tuple) -> Optional[int]:
    """How many Keras seeds `random.randint(1, 10**9)` lead from `before` to `after`
    (`random_state()` values), or None when something else moved.
    """
    (py_before, np_before, seeds_before), (py_after, np_after, seeds_after) = before, after
    same_numpy = np_before[0] == np_after[0] and all(
        np.array_equal(a, b) for a, b in zip(np_before[1:], np_after[1:])
    )
    same_seeds = (seeds_before is None and seeds_after is None) or (
        seeds_before is not None
        and seeds_after is not None
        and seeds_before[0] == seeds_after[0]
        and np.array_equal(seeds_before[1], seeds_after[1])
    )
    if not (same_numpy and same_seeds):
        return None
    stepper = random.Random()
    stepper.setstate(py_before)
    for count in range(_MAX_DRAWS + 1):
        if stepper.getstate() == py_after:
            return count
        stepper.randint(1, _KERAS_SEED_MAX)
    return None


@dataclasses.dataclass(frozen=True)
class Context:
    """The built pieces a command's runs share.

    Args:
        strategy: the `tf.distribute.Strategy` every run trains under.
        splits: the data's train/val/test splits (`dgad_tf.build.load_data`).
        teacher: the teacher file loaded once for all the runs (a study's), which
            `dgad_tf.run.run` uses instead of loading its `model.teacher_path`. Defaults to
            None (each run loads its own).
    """

    strategy: Any
    splits: DatasetSplits
    teacher: Optional[SharedTeacher] = None

    def with_teacher(self, teacher: Optional[SharedTeacher]) -> "Context":
        """This context holding `teacher`."""
        return dataclasses.replace(self, teacher=teacher)


def build_context(cfg: Config, batch_sizes=None) -> Context:
    """Create the configured strategy, then load the data: the order TensorFlow needs.

    The strategy comes first: logical CPUs must be configured before anything initialises
    TensorFlow's devices.

    Args:
        cfg: the config (`distribute`, `data`, `train.batch_size`).
        batch_sizes: (key, global batch size) pairs the strategy must divide. Defaults to None
            (`train.batch_size` only).

    Raises:
        RunError: naming the setting the strategy or the data loader refused.
    """
    from dgad_tf import build

    strategy = build.make_strategy(cfg, batch_sizes)
    return Context(strategy=strategy, splits=build.load_data(cfg))
