"""Robust teachers from PyTorch: convert TRADES / RobustBench / kuangliu checkpoints to Keras.

Example:
    >>> from dgad_tf.teachers import convert_checkpoint
    >>> teacher = convert_checkpoint("model_best.pt", "wrn-34-10", 10, "teacher.keras")
"""

__all__ = ["ConversionError", "convert_checkpoint", "convert_state_dict", "load_state_dict"]


def __getattr__(name):
    # Imported lazily so `python -m dgad_tf.teachers.convert` does not find its own module
    # already in sys.modules (runpy warns about that).
    if name in __all__:
        from dgad_tf.teachers import convert

        return getattr(convert, name)
    raise AttributeError(f"module 'dgad_tf.teachers' has no attribute {name!r}")
