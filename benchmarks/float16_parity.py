"""How far a `tflite_float16` export's probabilities are from the Keras model's.

Trains a network briefly, converts it as `tflite_float` and `tflite_float16` (the export's own
`convert_tflite`), runs both in the TFLite interpreter and prints, per network, the max abs
difference of softmax probabilities against Keras, the top-1 agreement and the file size. This is
the measurement behind `tflite_float16`'s tolerance (`dgad_tf.serving.tflite.FLOAT16_TOLERANCE`).

The first row is the tests' digits student (the conftest's network and training); each name
given is a network of the zoo trained one epoch on the first 2,000 images of the CIFAR-10
training file and scored on the first 256 test images.

Example:
    python benchmarks/float16_parity.py small-cnn resnet-18 \\
        --cifar /work/shared/data/cifar10
"""

import argparse
import pathlib
import tempfile

import numpy as np

import dgad_tf.cpu  # noqa: F401  (oneDNN switched on as in every command)


def _measure(model, x, label, folder):
    from dgad_tf import serving
    from dgad_tf.serving.formats import softmax

    reference = serving.verify.keras_logits(model, x)
    row = [label, f"n={len(x)}"]
    for mode in ("float", "float16"):
        path = pathlib.Path(folder) / f"{mode}.tflite"
        path.write_bytes(serving.convert_tflite(model, mode, x.shape[1:]))
        logits = serving.TFLiteRunner(path).logits(x)
        gap = np.abs(softmax(reference) - softmax(logits)).max()
        agree = np.mean(reference.argmax(1) == logits.argmax(1))
        row.append(f"{mode}: max|dp|={gap:.2e} top1={agree:.4f} {path.stat().st_size} B")
    print("  ".join(row), flush=True)


def _digits_student():
    import keras
    from sklearn.datasets import load_digits

    keras.utils.set_random_seed(0)
    data = load_digits()
    x = np.round(data.images / 16.0 * 255.0).astype(np.uint8)[..., None]
    inputs = keras.Input((8, 8, 1))
    hidden = keras.layers.Rescaling(1 / 0.3, offset=-0.5)(inputs)
    hidden = keras.layers.Conv2D(16, 3, padding="same", activation="relu")(hidden)
    hidden = keras.layers.MaxPooling2D()(hidden)
    hidden = keras.layers.Conv2D(32, 3, padding="same", activation="relu")(hidden)
    hidden = keras.layers.GlobalAveragePooling2D()(hidden)
    model = keras.Model(inputs, keras.layers.Dense(10)(hidden))
    model.compile(
        keras.optimizers.Adam(1e-2), keras.losses.SparseCategoricalCrossentropy(from_logits=True)
    )
    model.fit(x[:1500] / 255.0, data.target[:1500], epochs=5, batch_size=64, verbose=0)
    return model, (x[1500:] / np.float32(255.0)).astype(np.float32)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("models", nargs="*", help="zoo networks to train on CIFAR-10")
    parser.add_argument("--cifar", default="/work/shared/data/cifar10", help="folder of the npz")
    args = parser.parse_args(argv)

    import keras

    from dgad_tf.cpu import describe, summary
    from dgad_tf.models import build_model

    print(summary(describe()))
    with tempfile.TemporaryDirectory() as folder:
        _measure(*_digits_student(), "digits student", folder)
        if args.models:
            train = np.load(pathlib.Path(args.cifar) / "train_20k.npz")
            test = np.load(pathlib.Path(args.cifar) / "test.npz")
            x_test = (test["x"][:256] / np.float32(255.0)).astype(np.float32)
        for name in args.models:
            keras.utils.set_random_seed(0)
            model = build_model(name, 10)
            model.compile(
                keras.optimizers.SGD(0.05, momentum=0.9),
                keras.losses.SparseCategoricalCrossentropy(from_logits=True),
            )
            model.fit(
                train["x"][:2000] / np.float32(255.0),
                train["y"][:2000].astype(np.int64),
                epochs=1,
                batch_size=128,
                verbose=0,
            )
            _measure(model, x_test, f"{name}, 1 epoch on 2k CIFAR-10", folder)


if __name__ == "__main__":
    main()
