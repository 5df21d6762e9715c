"""Tests for dgad_tf.models: parameter counts, shapes, names, normalisation, save/load."""

import json
import random
import zipfile

import keras
import numpy as np
import pytest

from dgad_tf.models import (
    MODEL_NAMES,
    _common,
    build_model,
    canonical_model_name,
    load_model,
    save_model,
    saving,
)

# Compared with an independent reference: CI also runs these with TF_ENABLE_ONEDNN_OPTS=0.
pytestmark = pytest.mark.parity

CIFAR_MEAN = (0.4914, 0.4822, 0.4465)
CIFAR_STD = (0.2471, 0.2435, 0.2616)


def _trainable_params(model):
    return sum(int(np.prod(w.shape)) for w in model.trainable_weights)


def _randomize(model, seed=0):
    """Give every weight, BN moving statistics included, a random value (variances positive)."""
    rng = np.random.default_rng(seed)
    for layer in model.layers:
        if isinstance(layer, keras.layers.Normalization):
            continue
        values = []
        for weight in layer.weights:
            shape = tuple(weight.shape)
            if "variance" in weight.path:
                values.append(rng.uniform(0.5, 1.5, shape))
            else:
                values.append(rng.normal(0.0, 0.2, shape))
        layer.set_weights([v.astype("float32") for v in values])


def _torch_reference(name, num_classes):
    """The PyTorch reference network of a registry name (dgad_tf/teachers/torch_reference.py)."""
    pytest.importorskip("torch")
    from dgad_tf.teachers.torch_reference import (
        KuangliuBasicBlock,
        KuangliuMobileNetV2,
        KuangliuPreActBlock,
        KuangliuResNet,
        TradesWideResNet,
    )

    if name.startswith("wrn-"):
        depth, width = (int(v) for v in name.split("-")[1:])
        return TradesWideResNet(depth, width, num_classes)
    return {
        "resnet-18": lambda: KuangliuResNet(KuangliuBasicBlock, (2, 2, 2, 2), num_classes),
        "resnet-34": lambda: KuangliuResNet(KuangliuBasicBlock, (3, 4, 6, 3), num_classes),
        # kuangliu's PreActResNet18, the reference layout (no final BN).
        "preact-resnet-18": lambda: KuangliuResNet(KuangliuPreActBlock, (2, 2, 2, 2), num_classes),
        "mobilenetv2": lambda: KuangliuMobileNetV2(num_classes),
    }[name]()


@pytest.mark.parametrize(
    "name", ["resnet-18", "mobilenetv2", "wrn-16-4", "wrn-34-10", "resnet-34", "preact-resnet-18"]
)
def test_trainable_parameter_count_matches_pytorch(name):
    from dgad_tf.teachers.torch_reference import count_parameters

    expected = count_parameters(_torch_reference(name, 10))
    assert _trainable_params(build_model(name, 10)) == expected


def test_preact_resnet_18_for_tiny_imagenet_has_the_reference_2048_feature_head():
    model = build_model("preact-resnet-18", 200, (64, 64, 3))
    # PyTorch reference with Linear(2048, 200): 11,171,146 - 5,130 + 2048 * 200 + 200.
    assert _trainable_params(model) == 11_575_816
    assert tuple(model.get_layer("linear").kernel.shape) == (2048, 200)
    assert "bn" not in {layer.name for layer in model.layers}


def test_preact_resnet_18_needs_inputs_of_at_least_32_pixels():
    with pytest.raises(ValueError, match="input_shape"):
        build_model("preact-resnet-18", 10, (16, 16, 3))


@pytest.mark.parametrize(
    "name, input_shape",
    [
        ("small-cnn", (8, 8, 1)),
        ("small-cnn", (32, 32, 3)),
        ("resnet-18", (16, 16, 3)),
        ("resnet-34", (16, 16, 3)),
        ("preact-resnet-18", (32, 32, 3)),
        ("mobilenetv2", (16, 16, 3)),
        ("wrn-10-2", (16, 16, 3)),
    ],
)
def test_output_is_batch_by_classes_logits(name, input_shape):
    model = build_model(name, 7, input_shape)
    x = np.random.default_rng(0).uniform(size=(2,) + input_shape).astype("float32")
    logits = model(x, training=False)
    assert tuple(logits.shape) == (2, 7)
    # Logits, not probabilities: rows need not sum to one.
    assert not np.allclose(np.sum(logits, axis=-1), 1.0, atol=1e-3)


@pytest.mark.parametrize(
    "spelling, canonical",
    [
        ("ResNet18", "resnet-18"),
        ("resnet_34", "resnet-34"),
        ("PreActResNet18", "preact-resnet-18"),
        ("MobileNet_V2", "mobilenetv2"),
        ("WRN_34_10", "wrn-34-10"),
        ("wrn28-10", "wrn-28-10"),
        ("small_cnn", "small-cnn"),
    ],
)
def test_name_spellings_are_normalised(spelling, canonical):
    assert canonical_model_name(spelling) == canonical


def test_model_is_named_after_its_canonical_name():
    assert build_model("WRN_10_1", 10).name == "wrn-10-1"
    assert build_model("resnet18", 10, (8, 8, 3)).name == "resnet-18"


def test_unknown_name_error_lists_known_names():
    with pytest.raises(ValueError) as info:
        build_model("vgg-16", 10)
    message = str(info.value)
    assert "vgg-16" in message
    for name in (
        "small-cnn",
        "resnet-18",
        "resnet-34",
        "preact-resnet-18",
        "mobilenetv2",
        "wrn-34-10",
    ):
        assert name in message
    assert set(MODEL_NAMES) >= {
        "small-cnn",
        "resnet-18",
        "resnet-34",
        "preact-resnet-18",
        "mobilenetv2",
    }


def test_invalid_wrn_depth_is_rejected():
    with pytest.raises(ValueError, match="wrn-33-10"):
        build_model("wrn-33-10", 10)


@pytest.mark.parametrize("num_classes", [1, 0, 2.5, True])
def test_bad_num_classes_is_rejected(num_classes):
    with pytest.raises(ValueError, match="num_classes"):
        build_model("small-cnn", num_classes)


@pytest.mark.parametrize("input_shape", [(32, 32), (32, 32, 0), (2, 2, 1), (32.5, 32, 3), "32x32"])
def test_bad_input_shape_is_rejected(input_shape):
    with pytest.raises(ValueError, match="input_shape"):
        build_model("small-cnn", 10, input_shape)


def test_bad_normalize_is_rejected():
    with pytest.raises(ValueError, match="normalize"):
        build_model("small-cnn", 10, normalize=((0.5, 0.5, 0.5), (0.2, 0.0, 0.2)))


def test_normalize_layer_equals_manual_standardisation():
    normalized = build_model("wrn-10-1", 10, (8, 8, 3), normalize=(CIFAR_MEAN, CIFAR_STD))
    plain = build_model("wrn-10-1", 10, (8, 8, 3))
    _randomize(normalized)
    plain.set_weights(_body_weights(normalized))
    x = np.random.default_rng(1).uniform(size=(3, 8, 8, 3)).astype("float32")
    manual = (x - np.array(CIFAR_MEAN, "float32")) / np.array(CIFAR_STD, "float32")
    expected = plain(manual, training=False)
    np.testing.assert_allclose(normalized(x, training=False), expected, rtol=1e-5, atol=1e-5)
    # The layer must actually do something: feeding raw pixels to the plain model differs.
    assert np.max(np.abs(plain(x, training=False) - expected)) > 1e-2


def _body_weights(model):
    """All weights except those of the Normalization layer, in `get_weights` order."""
    weights = []
    for layer in model.layers:
        if not isinstance(layer, keras.layers.Normalization):
            weights.extend(layer.get_weights())
    return weights


@pytest.mark.parametrize(
    "name, input_shape, normalize",
    [
        ("small-cnn", (8, 8, 1), ((0.5,), (0.25,))),
        ("mobilenetv2", (16, 16, 3), None),
        ("wrn-10-2", (16, 16, 3), (CIFAR_MEAN, CIFAR_STD)),
        ("preact-resnet-18", (32, 32, 3), None),
    ],
)
def test_keras_file_round_trip_in_safe_mode(tmp_path, name, input_shape, normalize):
    model = build_model(name, 10, input_shape, normalize=normalize)
    _randomize(model)
    path = tmp_path / f"{model.name}.keras"
    model.save(path)
    loaded = keras.saving.load_model(path, safe_mode=True, compile=False)
    x = np.random.default_rng(2).uniform(size=(2,) + input_shape).astype("float32")
    assert loaded.name == model.name
    np.testing.assert_array_equal(loaded(x, training=False), model(x, training=False))


def _norm_kinds(model):
    """The classes of `model`'s batch-norm layers, nested models included."""
    kinds = set()
    for layer in model.layers:
        if isinstance(layer, keras.Model):
            kinds |= _norm_kinds(layer)
        elif isinstance(layer, keras.layers.BatchNormalization):
            kinds.add(type(layer))
    return kinds


def _archive_json(path, member):
    with zipfile.ZipFile(path) as archive:
        return json.loads(archive.read(member))


@pytest.mark.parametrize("name, input_shape", [("small-cnn", (8, 8, 1)), ("wrn-10-2", (16, 16, 3))])
def test_saved_file_names_keras_batch_norm_and_load_model_restores_the_fused_layer(
    tmp_path, name, input_shape
):
    model = build_model(name, 10, input_shape)
    _randomize(model)
    path = tmp_path / "net.keras"
    save_model(model, path)
    assert "FusedBatchNormalization" not in json.dumps(_archive_json(path, "config.json"))
    norms = [
        layer.name for layer in model.layers if isinstance(layer, _common.FusedBatchNormalization)
    ]
    assert _archive_json(path, saving.RECORD)["fused_batch_norm"] == norms
    # Keras alone builds its own layer (here dgad_tf is imported; a test in test_fit.py and one in
    # test_convert.py load in a process that cannot import it) ...
    plain = keras.saving.load_model(path, safe_mode=True)
    assert _norm_kinds(plain) == {keras.layers.BatchNormalization}
    # ... and dgad_tf's loader gives back the layer the network trains with.
    loaded = load_model(path)
    assert _norm_kinds(loaded) == {_common.FusedBatchNormalization}
    assert loaded.name == model.name
    for saved, original in zip(loaded.weights, model.weights):
        assert saved.path == original.path
        np.testing.assert_array_equal(saved.numpy(), original.numpy(), err_msg=saved.path)
    x = np.random.default_rng(2).uniform(size=(2,) + input_shape).astype("float32")
    np.testing.assert_array_equal(loaded(x, training=False), model(x, training=False))
    np.testing.assert_allclose(plain(x, training=False), model(x, training=False), atol=1e-5)
    assert _norm_kinds(model) == {_common.FusedBatchNormalization}  # the saved model is unchanged


def test_nested_zoo_network_round_trips_with_its_fused_layers(tmp_path):
    inner = build_model("small-cnn", 10, (8, 8, 1))
    outer = keras.Sequential([keras.Input((8, 8, 1)), inner, keras.layers.Softmax()], name="outer")
    path = tmp_path / "outer.keras"
    save_model(outer, path)
    norms = [f"small-cnn/{layer.name}" for layer in inner.layers if "bn" in layer.name]
    assert len(norms) == 4
    assert _archive_json(path, saving.RECORD)["fused_batch_norm"] == norms
    assert _norm_kinds(keras.saving.load_model(path)) == {keras.layers.BatchNormalization}
    assert _norm_kinds(load_model(path)) == {_common.FusedBatchNormalization}


def test_keras_own_batch_norm_stays_keras_own(tmp_path):
    # Only the layers that were fused come back fused: a synchronized zoo network (Keras's layer)
    # is written as it is, without a record.
    model = build_model("small-cnn", 10, (8, 8, 1), sync_batchnorm=True)
    path = tmp_path / "synced.keras"
    save_model(model, path)
    with zipfile.ZipFile(path) as archive:
        assert saving.RECORD not in archive.namelist()
    assert _norm_kinds(load_model(path)) == {keras.layers.BatchNormalization}


def test_a_file_naming_fused_batch_norm_itself_still_loads(tmp_path):
    # Files written by plain `model.save` (and by dgad_tf before save_model) name the custom class.
    model = build_model("small-cnn", 10, (8, 8, 1))
    model.save(tmp_path / "old.keras")
    assert _norm_kinds(load_model(tmp_path / "old.keras")) == {_common.FusedBatchNormalization}


def test_saving_and_loading_draw_from_pythons_random_only_as_keras_own_load_does(tmp_path):
    # Keras seeds the initialisers it constructs from Python's `random`; the rebuilds must add
    # no draws, or a checkpoint written after an epoch would change what the next one draws.
    model = build_model("small-cnn", 10, (8, 8, 1))
    path = tmp_path / "net.keras"
    before = random.getstate()
    save_model(model, path)
    assert random.getstate() == before
    load_model(path)
    after_dgad_tf = random.getstate()
    random.setstate(before)
    keras.saving.load_model(path)
    assert random.getstate() == after_dgad_tf


def test_a_record_naming_layers_the_model_lacks_is_refused(tmp_path):
    path = tmp_path / "net.keras"
    save_model(build_model("small-cnn", 10, (8, 8, 1), sync_batchnorm=True), path)  # no record
    with zipfile.ZipFile(path, "a") as archive:
        archive.writestr(saving.RECORD, json.dumps({"fused_batch_norm": ["bn1", "bn9"]}))
    with pytest.raises(ValueError, match="not a Keras BatchNormalization.*: bn9$"):
        load_model(path)


def test_save_model_wants_a_keras_suffix(tmp_path):
    with pytest.raises(ValueError, match="'.keras'"):
        save_model(build_model("small-cnn", 10, (8, 8, 1)), tmp_path / "net.h5")


def test_stride_two_conv_pads_symmetrically_like_pytorch():
    # PyTorch Conv2d(k=3, stride=2, padding=1) on an even input pads one pixel on every side.
    rng = np.random.default_rng(3)
    x = rng.normal(size=(1, 6, 6, 2)).astype("float32")
    kernel = rng.normal(size=(3, 3, 2, 4)).astype("float32")
    inputs = keras.Input((6, 6, 2))
    model = keras.Model(inputs, _common.conv(inputs, 4, 3, 2, "c"))
    model.get_layer("c").set_weights([kernel])
    padded = np.pad(x[0], ((1, 1), (1, 1), (0, 0)))
    expected = np.zeros((3, 3, 4), "float32")
    for i in range(3):
        for j in range(3):
            patch = padded[2 * i : 2 * i + 3, 2 * j : 2 * j + 3, :]
            expected[i, j] = np.einsum("hwc,hwco->o", patch, kernel)
    np.testing.assert_allclose(model(x)[0], expected, rtol=1e-5, atol=1e-5)


def test_batchnorm_uses_pytorch_momentum_epsilon_and_sync_flag():
    model = build_model("small-cnn", 10, (8, 8, 3), sync_batchnorm=True)
    norms = [layer for layer in model.layers if isinstance(layer, keras.layers.BatchNormalization)]
    assert norms
    for layer in norms:
        assert (layer.momentum, layer.epsilon, layer.synchronized) == (0.9, 1e-5, True)
    plain = build_model("small-cnn", 10, (8, 8, 3))
    assert not any(getattr(layer, "synchronized", False) for layer in plain.layers)


def test_zoo_batch_norm_is_fused_unless_synchronized():
    fused = build_model("small-cnn", 10, (8, 8, 3))
    synced = build_model("small-cnn", 10, (8, 8, 3), sync_batchnorm=True)
    kinds = {type(layer) for layer in fused.layers if "bn" in layer.name}
    assert kinds == {_common.FusedBatchNormalization}
    assert all(
        type(layer) is keras.layers.BatchNormalization
        for layer in synced.layers
        if "bn" in layer.name
    )


def _batch_norm_layer(channels=3, gamma=(1.5, 0.5, 2.0), beta=(0.1, -0.2, 0.3)):
    layer = _common.FusedBatchNormalization(momentum=0.9, epsilon=1e-5)
    layer.build((None, 4, 5, channels))
    layer.gamma.assign(np.asarray(gamma, "float32"))
    layer.beta.assign(np.asarray(beta, "float32"))
    layer.moving_mean.assign(np.asarray([0.2, -0.1, 0.0], "float32"))
    layer.moving_variance.assign(np.asarray([1.0, 2.0, 0.5], "float32"))
    return layer


def test_fused_batch_norm_training_step_against_numpy():
    # Training mode: normalise with the batch's biased variance, average the *unbiased* one
    # (n / (n - 1)) into the moving variance, as PyTorch's BatchNorm2d does.
    rng = np.random.default_rng(0)
    x = rng.normal(1.0, 3.0, size=(2, 4, 5, 3)).astype("float32")
    layer = _batch_norm_layer()
    start_mean, start_var = layer.moving_mean.numpy(), layer.moving_variance.numpy()
    y = np.asarray(layer(x, training=True))
    x64 = x.astype(np.float64)
    mean, biased = x64.mean(axis=(0, 1, 2)), x64.var(axis=(0, 1, 2))
    expected = (x64 - mean) / np.sqrt(biased + 1e-5) * [1.5, 0.5, 2.0] + [0.1, -0.2, 0.3]
    np.testing.assert_allclose(y, expected, rtol=1e-5, atol=1e-5)
    n = 2 * 4 * 5
    np.testing.assert_allclose(layer.moving_mean.numpy(), 0.9 * start_mean + 0.1 * mean, atol=1e-6)
    np.testing.assert_allclose(
        layer.moving_variance.numpy(), 0.9 * start_var + 0.1 * biased * n / (n - 1), rtol=1e-6
    )


def test_fused_batch_norm_inference_and_gradients_equal_keras_batch_norm():
    # Inference uses the moving statistics and leaves them alone; gradients (to the input in
    # inference mode, as the attack takes them; to input, gamma and beta in training mode) are
    # those of Keras's own BatchNormalization on the same weights.
    import tensorflow as tf

    rng = np.random.default_rng(1)
    x = tf.constant(rng.normal(size=(2, 4, 5, 3)).astype("float32"))
    r = tf.constant(rng.normal(size=(2, 4, 5, 3)).astype("float32"))
    fused = _batch_norm_layer()
    plain = keras.layers.BatchNormalization(momentum=0.9, epsilon=1e-5)
    plain.build((None, 4, 5, 3))
    plain.set_weights(fused.get_weights())
    stats = [w.copy() for w in fused.get_weights()[2:]]
    for training in (False, True):
        grads = []
        for layer in (fused, plain):
            with tf.GradientTape() as tape:
                tape.watch(x)
                loss = tf.reduce_sum(layer(x, training=training) * r)
            grads.append(tape.gradient(loss, [x, layer.gamma, layer.beta]))
            if not training:
                for before, after in zip(stats, layer.get_weights()[2:]):
                    np.testing.assert_array_equal(before, after)
        for ours, keras_grad in zip(*grads):
            np.testing.assert_allclose(ours, keras_grad, rtol=1e-4, atol=1e-5)
    moving_x = (np.asarray(x) - [0.2, -0.1, 0.0]) / np.sqrt(np.asarray([1.0, 2.0, 0.5]) + 1e-5)
    fresh = _batch_norm_layer()
    np.testing.assert_allclose(
        fresh(x, training=False), moving_x * [1.5, 0.5, 2.0] + [0.1, -0.2, 0.3], atol=1e-5
    )


def test_fused_batch_norm_matches_pytorch_batchnorm2d_over_steps():
    # Three training steps and an inference call against torch.nn.BatchNorm2d from equal state.
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(2)
    layer = _batch_norm_layer()
    reference = torch.nn.BatchNorm2d(3, eps=1e-5, momentum=0.1)
    with torch.no_grad():
        for name, weight in zip(
            ("weight", "bias", "running_mean", "running_var"), layer.get_weights()
        ):
            getattr(reference, name).copy_(torch.from_numpy(weight))
    reference.train()
    for _ in range(3):
        x = rng.normal(0.5, 2.0, size=(4, 3, 3, 3)).astype("float32")
        ours = np.asarray(layer(x, training=True))
        theirs = reference(torch.from_numpy(x.transpose(0, 3, 1, 2))).detach().numpy()
        np.testing.assert_allclose(ours, theirs.transpose(0, 2, 3, 1), rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(layer.moving_mean.numpy(), reference.running_mean.numpy(), atol=1e-6)
    np.testing.assert_allclose(
        layer.moving_variance.numpy(), reference.running_var.numpy(), rtol=1e-6
    )
    reference.eval()
    x = rng.normal(size=(2, 3, 3, 3)).astype("float32")
    theirs = reference(torch.from_numpy(x.transpose(0, 3, 1, 2))).detach().numpy()
    np.testing.assert_allclose(
        layer(x, training=False), theirs.transpose(0, 2, 3, 1), rtol=1e-5, atol=1e-5
    )


@pytest.mark.parametrize("policy", ["mixed_bfloat16", "mixed_float16"])
def test_fused_batch_norm_takes_16_bit_activations(policy):
    # Under a mixed policy: 16-bit in and out, float32 statistics, close to the float32 layer.
    import tensorflow as tf

    rng = np.random.default_rng(3)
    x = rng.normal(size=(2, 4, 5, 3)).astype("float32")
    full = _batch_norm_layer()
    mixed = _common.FusedBatchNormalization(momentum=0.9, epsilon=1e-5, dtype=policy)
    mixed.build((None, 4, 5, 3))
    mixed.set_weights(full.get_weights())
    half = tf.cast(x, mixed.compute_dtype)
    for training in (False, True):
        out = mixed(half, training=training)
        assert out.dtype == mixed.compute_dtype
        tolerance = 0.05 if policy == "mixed_bfloat16" else 5e-3
        np.testing.assert_allclose(
            tf.cast(out, "float32"), full(x, training=training), atol=tolerance, rtol=tolerance
        )
    assert mixed.moving_variance.dtype == "float32"
    np.testing.assert_allclose(mixed.moving_variance, full.moving_variance, rtol=1e-2)


def test_name_prefix_applies_to_model_and_every_layer():
    model = build_model("resnet-18", 10, (8, 8, 3), name_prefix="teacher_")
    assert model.name == "teacher_resnet-18"
    assert all(layer.name.startswith("teacher_") for layer in model.layers)
    with pytest.raises(ValueError, match="name_prefix"):
        build_model("small-cnn", 10, name_prefix="a/b")


def test_weight_layers_are_named_after_pytorch_modules():
    model = build_model("wrn-16-1", 10, (8, 8, 3))
    names = {layer.name for layer in model.layers if layer.weights}
    assert {"conv1", "block2.layer.0.convShortcut", "block3.layer.1.bn2", "bn1", "fc"} <= names
    # Group 1 of a width-1 WRN keeps 16 channels, so no shortcut conv there.
    assert "block1.layer.0.convShortcut" not in names


# ---------------------------------------------------------------- initialisation


def _expected_torch_init(layer, wrn):
    """[(weight, 'uniform' bound or 'normal' sigma or 'zero', value)] from PyTorch's formulas."""
    if isinstance(layer, keras.layers.DepthwiseConv2D):
        kh, kw, channels, multiplier = layer.kernel.shape
        return [(layer.kernel, "uniform", 1 / np.sqrt(kh * kw))]  # torch weight (C, 1, kh, kw)
    if isinstance(layer, keras.layers.Conv2D):
        kh, kw, channels_in, channels_out = layer.kernel.shape
        if wrn:
            return [(layer.kernel, "normal", np.sqrt(2 / (kh * kw * channels_out)))]
        return [(layer.kernel, "uniform", 1 / np.sqrt(kh * kw * channels_in))]
    if isinstance(layer, keras.layers.Dense):
        bound = 1 / np.sqrt(layer.kernel.shape[0])
        return [(layer.kernel, "uniform", bound), (layer.bias, "zero" if wrn else "uniform", bound)]
    return []


@pytest.mark.parametrize(
    "name, input_shape, wrn",
    [
        ("small-cnn", (8, 8, 3), False),
        ("resnet-18", (8, 8, 3), False),
        ("preact-resnet-18", (32, 32, 3), False),
        ("mobilenetv2", (8, 8, 3), False),
        ("wrn-16-2", (8, 8, 3), True),
    ],
)
def test_torch_init_matches_pytorch_formulas_per_layer(name, input_shape, wrn):
    # 300 classes give the linear bias enough values for an empirical std.
    model = build_model(name, 300, input_shape, init="torch")
    checked = set()
    for layer in model.layers:
        for weight, kind, scale in _expected_torch_init(layer, wrn):
            values = np.asarray(weight.numpy(), np.float64).ravel()
            if kind == "zero":
                np.testing.assert_array_equal(values, 0.0, err_msg=weight.path)
                checked.add(kind)
                continue
            if kind == "uniform":
                assert np.max(np.abs(values)) <= scale * (1 + 1e-6), weight.path
                expected_std = scale / np.sqrt(3)
            else:
                expected_std = scale
            if values.size >= 256:  # std of the std estimate < 3% here; 12% is four of them
                assert np.std(values) == pytest.approx(expected_std, rel=0.12), weight.path
                assert abs(np.mean(values)) < 4 * expected_std / np.sqrt(values.size), weight.path
                checked.add((type(layer).__name__, weight.path.rsplit("/", 1)[-1], kind))
        if isinstance(layer, keras.layers.BatchNormalization):
            np.testing.assert_array_equal(layer.gamma.numpy(), 1.0)
            np.testing.assert_array_equal(layer.beta.numpy(), 0.0)
    kinds = {entry[0] for entry in checked if isinstance(entry, tuple)}
    assert "Dense" in kinds and ("Conv2D" in kinds)
    if name == "mobilenetv2":
        assert "DepthwiseConv2D" in kinds
    if wrn:
        assert "zero" in checked


def test_torch_init_depthwise_fan_in_is_kernel_area_only():
    model = build_model("mobilenetv2", 10, (8, 8, 3), init="torch")
    kernel = model.get_layer("layers.16.conv2").kernel.numpy()  # (3, 3, 960, 1)
    # PyTorch's fan_in of a groups=C conv is 1*3*3; k*k*C would give a bound of 1/93.
    assert np.max(np.abs(kernel)) > 0.3 and np.max(np.abs(kernel)) <= 1 / 3


def test_keras_init_differs_from_torch_init():
    torch_model = build_model("resnet-18", 300, (8, 8, 3), init="torch")
    keras_model = build_model("resnet-18", 300, (8, 8, 3), init="keras")
    conv_torch = torch_model.get_layer("layer3.0.conv1").kernel.numpy()
    conv_keras = keras_model.get_layer("layer3.0.conv1").kernel.numpy()
    fan_in = 3 * 3 * 128
    # Keras's he_normal has std sqrt(2 / fan_in): sqrt(6) times PyTorch's 1 / sqrt(3 fan_in).
    assert np.std(conv_keras) == pytest.approx(np.sqrt(2 / fan_in), rel=0.05)
    assert np.std(conv_torch) == pytest.approx(1 / np.sqrt(3 * fan_in), rel=0.05)
    np.testing.assert_array_equal(keras_model.get_layer("linear").bias.numpy(), 0.0)
    assert np.std(torch_model.get_layer("linear").bias.numpy()) > 0.5 / np.sqrt(3 * 512)


def test_unknown_init_is_rejected():
    with pytest.raises(ValueError, match="init='xavier'"):
        build_model("small-cnn", 10, (8, 8, 3), init="xavier")


@pytest.mark.parametrize("init", ["torch", "keras"])
def test_model_init_config_reaches_the_built_network(init):
    from dgad_tf import build
    from dgad_tf import data as data_lib
    from dgad_tf.config import load_config

    cfg = load_config(None, [f"model.init={init}"])
    splits = data_lib.load_splits("digits")
    bias = build.build_network(cfg, "small-cnn", splits).get_layer("fc").bias.numpy()
    # Keras zeroes a Dense bias; PyTorch draws it U(+-1/sqrt(64)).
    assert (np.count_nonzero(bias) == 0) == (init == "keras")
