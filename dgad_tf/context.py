"""What the runs of one command share, built once: the distribution strategy and the data.

A study trains many cells and a search many trials from the same data under the same strategy.
Each builds one `Context` (`build_context`) and every run it drives plans over it, so the data
is loaded and the strategy created once per command, not once per cell:
`dgad_tf.study.run_study` passes its context to every cell's `dgad_tf.run.run` (which builds
its own when it is given none, as `fit` does).

A search also keeps the one teacher it distils from in its context (`with_teacher`). A study's
cells load the study's teacher file each: loading a model draws from Keras's global random
state, so a cell that skipped it would start its student from other initial weights than the
same cell run alone with `python -m dgad_tf.fit`.

Example:
    >>> context = build_context(cfg)
    >>> report = run(cfg, context=context)
"""

from __future__ import annotations

import dataclasses
from typing import TYPE_CHECKING, Any, Optional

if TYPE_CHECKING:
    import keras

    from dgad_tf.config import Config
    from dgad_tf.data import DatasetSplits


@dataclasses.dataclass(frozen=True)
class Context:
    """The built pieces a command's runs share.

    Args:
        strategy: the `tf.distribute.Strategy` every run trains under.
        splits: the data's train/val/test splits (`dgad_tf.build.load_data`).
        teacher: the loaded teacher, when the command obtained it once for all its runs.
            Defaults to None.
    """

    strategy: Any
    splits: DatasetSplits
    teacher: Optional[keras.Model] = None

    def with_teacher(self, teacher: Optional[keras.Model]) -> "Context":
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
