"""dgad_tf: Dynamic Guidance Adversarial Distillation in Keras/TensorFlow.

Public names: `AdversarialDistiller`, `dgad_loss`, `evaluate_robustness`, `load_config`,
`__version__`. They are imported on first use, so `python -m dgad_tf.fit --print-config` and
config errors do not wait for TensorFlow to load.
"""

__version__ = "0.1.0"

_PUBLIC = {
    "AdversarialDistiller": "dgad_tf.distiller",
    "dgad_loss": "dgad_tf.losses",
    "evaluate_robustness": "dgad_tf.robustness",
    "load_config": "dgad_tf.config",
}

__all__ = ["__version__", *_PUBLIC]


def __getattr__(name):
    if name in _PUBLIC:
        import importlib

        return getattr(importlib.import_module(_PUBLIC[name]), name)
    raise AttributeError(f"module 'dgad_tf' has no attribute {name!r}")
