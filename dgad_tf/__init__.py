"""dgad_tf: Dynamic Guidance Adversarial Distillation in Keras/TensorFlow.

Public names: `AdversarialDistiller`, `dgad_loss`, `evaluate_robustness`, `load_config`,
`__version__`. They are imported on first use, so `python -m dgad_tf.fit --print-config` and
config errors do not wait for TensorFlow to load.

Importing the package first switches TensorFlow's oneDNN CPU kernels on for x86 CPUs where
TensorFlow leaves them off (`dgad_tf.cpu`); `TF_ENABLE_ONEDNN_OPTS` set by the user wins.
"""

from dgad_tf import cpu as _cpu

_cpu.use_onednn_by_default()

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
