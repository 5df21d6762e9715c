"""Load `.keras` files with plain Keras in a fresh interpreter that cannot import dgad_tf.

dgad_tf is pip-installed in editable mode, so neither a clean working directory nor `python -I`
keeps it out: the child puts a finder first on `sys.meta_path` that refuses every `dgad_tf`
module, checks that `import dgad_tf` now fails, loads each file with
`keras.saving.load_model(path)` (safe mode, Keras's default) and returns its logits.
"""

import json
import os
import sys

import keras
import numpy as np
from subprocesses import run_command

from dgad_tf.models import _common, load_model

CHILD = r"""
import importlib.abc
import json
import sys


class RefuseDgadTf(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name == "dgad_tf" or name.startswith("dgad_tf."):
            raise ImportError(f"{name}: this process must not use dgad_tf")
        return None


sys.meta_path.insert(0, RefuseDgadTf())
try:
    import dgad_tf  # noqa: F401
except ImportError:
    pass
else:
    sys.exit("dgad_tf was importable: the test would prove nothing")

import keras
import numpy as np

x_path, out_path, *paths = sys.argv[1:]
x = np.load(x_path)
logits, classes = {}, {}
for index, path in enumerate(paths):
    model = keras.saving.load_model(path)
    logits[f"logits_{index}"] = keras.ops.convert_to_numpy(model(x, training=False))
    classes[path] = sorted({f"{type(layer).__module__}.{type(layer).__name__}"
                            for layer in model.layers})
np.savez(out_path, **logits)
leaked = sorted(name for name in sys.modules if name.split(".")[0] == "dgad_tf")
print(json.dumps({"classes": classes, "dgad_tf_modules": leaked}))
"""


def plain_keras_logits(paths, x, workdir):
    """{path: logits} of each file loaded by plain Keras in a fresh process without dgad_tf.

    Also returns {path: the layer classes the child built}. The child runs isolated (`-I`: no
    PYTHONPATH, no user site, no working directory on sys.path) from `workdir`.
    """
    workdir = str(workdir)
    np.save(os.path.join(workdir, "x.npy"), x)
    out = os.path.join(workdir, "logits.npz")
    env = {k: v for k, v in os.environ.items() if not k.startswith("PYTHON")}
    env["TF_CPP_MIN_LOG_LEVEL"] = "3"
    proc = run_command(
        [sys.executable, "-I", "-c", CHILD, os.path.join(workdir, "x.npy"), out]
        + [str(p) for p in paths],
        cwd=workdir,
        env=env,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    report = json.loads(proc.stdout.strip().splitlines()[-1])
    assert report["dgad_tf_modules"] == []
    with np.load(out) as saved:
        logits = {str(p): saved[f"logits_{i}"] for i, p in enumerate(paths)}
    return logits, report["classes"]


def assert_plain_keras_gives_dgad_tf_logits(paths, workdir, n=4, seed=0):
    """Every file in `paths` gives, in plain Keras without dgad_tf, the logits that
    `dgad_tf.models.load_model` gives here (to 1e-5), and dgad_tf restores its fused batch norm.

    The input is `n` uniform images of each model's input shape.
    """
    paths = [str(p) for p in paths]
    loaded = {path: load_model(path) for path in paths}
    shapes = {tuple(model.input_shape[1:]) for model in loaded.values()}
    assert len(shapes) == 1, shapes
    x = np.random.default_rng(seed).uniform(size=(n,) + shapes.pop()).astype("float32")
    plain, classes = plain_keras_logits(paths, x, workdir)
    for path, model in loaded.items():
        norms = [
            layer for layer in model.layers if isinstance(layer, keras.layers.BatchNormalization)
        ]
        kinds = {type(layer) for layer in norms}
        assert kinds == {_common.FusedBatchNormalization}, (path, kinds)
        assert all(name.startswith("keras.") for name in classes[path]), (path, classes[path])
        expected = np.asarray(model(x, training=False))
        assert np.std(expected) > 1e-3, path  # logits that tell images apart
        np.testing.assert_allclose(plain[path], expected, rtol=0, atol=1e-5, err_msg=path)
