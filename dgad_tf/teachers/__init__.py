"""Robust teachers from PyTorch: convert TRADES / RobustBench / kuangliu checkpoints to Keras.

Example:
    >>> from dgad_tf.teachers import convert_checkpoint
    >>> teacher = convert_checkpoint("model_best.pt", "wrn-34-10", 10, "teacher.keras")
"""

from dgad_tf.teachers.conversion import (
    ConversionError,
    convert_checkpoint,
    convert_state_dict,
    load_state_dict,
)

__all__ = ["ConversionError", "convert_checkpoint", "convert_state_dict", "load_state_dict"]
