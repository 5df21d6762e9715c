"""Tests for dgad_tf.teachers.convert against PyTorch reference networks.

The PyTorch networks in dgad_tf/teachers/torch_reference.py follow the public reference layouts
(TRADES / RobustBench WideResNet with its unused `sub_block1`, kuangliu's ResNet, PreAct-ResNet and
MobileNetV2); their weights and BatchNorm running statistics are randomised, and the converted
Keras model must reproduce their logits and input gradients.
"""

import os
import sys

import numpy as np
import pytest
from subprocesses import run_command

torch = pytest.importorskip("torch")
nn = torch.nn

import keras  # noqa: E402
import tensorflow as tf  # noqa: E402

from dgad_tf.teachers import convert  # noqa: E402
from dgad_tf.teachers.torch_reference import (  # noqa: E402
    NETWORKS,
    KuangliuPreActBlock,
    KuangliuResNet,
    TradesWideResNet,
)

# Compared with an independent reference: CI also runs these with TF_ENABLE_ONEDNN_OPTS=0.
pytestmark = pytest.mark.parity

CIFAR_MEAN = (0.4914, 0.4822, 0.4465)
CIFAR_STD = (0.2471, 0.2435, 0.2616)
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _make_net(factory, num_classes=10, seed=0):
    """Build a network with random weights and BN statistics, in eval mode."""
    torch.manual_seed(seed)
    net = factory(num_classes)
    with torch.no_grad():
        for module in net.modules():
            if isinstance(module, nn.BatchNorm2d):
                module.weight.uniform_(0.5, 1.5)
                module.bias.normal_(0.0, 0.1)
                module.running_mean.normal_(0.0, 0.1)
                module.running_var.uniform_(0.5, 1.5)
                module.num_batches_tracked.fill_(7)
            elif isinstance(module, nn.Linear):
                # Logits of order one, so the 1e-4 absolute tolerance is a tight relative one.
                module.weight.normal_(0.0, 4.0 / module.in_features**0.5)
                module.bias.normal_(0.0, 0.1)
    return net.eval()


def _torch_logits_and_grad(net, x, labels):
    x_nchw = torch.tensor(x.transpose(0, 3, 1, 2), requires_grad=True)
    logits = net(x_nchw)
    logits.gather(1, torch.tensor(labels)[:, None]).sum().backward()
    return logits.detach().numpy(), x_nchw.grad.numpy().transpose(0, 2, 3, 1)


def _keras_logits_and_grad(model, x, labels):
    x = tf.constant(x)
    with tf.GradientTape() as tape:
        tape.watch(x)
        logits = model(x, training=False)
        objective = tf.reduce_sum(tf.gather(logits, labels, batch_dims=1))
    return logits.numpy(), tape.gradient(objective, x).numpy()


def _assert_same_function(net, model, seed=0, size=32):
    rng = np.random.default_rng(seed)
    x = rng.uniform(size=(2, size, size, 3)).astype("float32")
    labels = np.array([1, 7])
    torch_logits, torch_grad = _torch_logits_and_grad(net, x, labels)
    keras_logits, keras_grad = _keras_logits_and_grad(model, x, labels)
    assert np.max(np.abs(keras_logits - torch_logits)) <= 1e-4
    # Relative L2 error, not the largest pixel: a ReLU whose float32 pre-activation lies within
    # rounding of 0 takes the other branch in one framework and moves the gradient of the pixels
    # behind it. On an AVX2 CPU (TensorFlow's convolutions in Eigen, PyTorch's in oneDNN) that
    # happened for WRN-34-10 on one batch: 1.6e-3 at its worst pixel, 1.1% of pixels over 1e-4,
    # 2.3e-4 in L2, where other batches agree to 1e-6. A wrong conversion is off by far more.
    relative = np.linalg.norm(keras_grad - torch_grad) / np.linalg.norm(torch_grad)
    assert relative <= 1e-3


def _save(net, path):
    torch.save(net.state_dict(), path)
    return path


# ---------------------------------------------------------------- equivalence


@pytest.mark.parametrize("arch", sorted(NETWORKS))
def test_converted_keras_file_matches_pytorch_logits_and_gradients(tmp_path, arch):
    net = _make_net(NETWORKS[arch])
    out = tmp_path / "teacher.keras"
    convert.convert_checkpoint(_save(net, tmp_path / "net.pt"), arch, 10, out)
    model = keras.saving.load_model(out, safe_mode=True, compile=False)
    _assert_same_function(net, model)


def test_robustbench_preact_with_final_bn_is_detected(tmp_path):
    net = _make_net(lambda c: KuangliuResNet(KuangliuPreActBlock, (2, 2, 2, 2), c, final_bn=True))
    model = convert.convert_checkpoint(_save(net, tmp_path / "net.pt"), "preact-resnet-18", 10)
    assert "bn" in {layer.name for layer in model.layers}
    _assert_same_function(net, model)


@pytest.mark.parametrize("size, num_classes", [(64, 200), (32, 10)])
def test_reference_preact_resnet_18_converts_at_tiny_and_cifar_size(tmp_path, size, num_classes):
    # The reference layout: no final BN, avg_pool2d(out, 4), 2x2x512 = 2048 features at 64x64.
    net = _make_net(
        lambda c: KuangliuResNet(KuangliuPreActBlock, (2, 2, 2, 2), c, input_size=size), num_classes
    )
    assert net.linear.in_features == 512 * (size // 32) ** 2
    model = convert.convert_checkpoint(
        _save(net, tmp_path / "net.pt"),
        "preact-resnet-18",
        num_classes,
        input_shape=(size, size, 3),
    )
    assert "bn" not in {layer.name for layer in model.layers}
    params = sum(int(np.prod(w.shape)) for w in model.trainable_weights)
    assert params == sum(p.numel() for p in net.parameters())
    _assert_same_function(net, model, size=size)


def test_nested_dataparallel_checkpoint_converts(tmp_path):
    net = _make_net(NETWORKS["wrn-10-2"])
    state = {f"module.{k}": v for k, v in net.state_dict().items()}
    path = tmp_path / "nested.pt"
    torch.save({"epoch": 3, "state_dict": state, "optimizer": {"lr": 0.1}}, path)
    _assert_same_function(net, convert.convert_checkpoint(path, "WRN_10_2", 10))


def test_safetensors_checkpoint_converts(tmp_path):
    safetensors_torch = pytest.importorskip("safetensors.torch")
    net = _make_net(NETWORKS["wrn-16-1"])
    path = tmp_path / "net.safetensors"
    safetensors_torch.save_file({k: v.contiguous() for k, v in net.state_dict().items()}, str(path))
    _assert_same_function(net, convert.convert_checkpoint(path, "wrn-16-1", 10))


def test_robustbench_normalisation_buffers_become_a_layer(tmp_path):
    net = _make_net(lambda c: TradesWideResNet(10, 1, c, buffers=(CIFAR_MEAN, CIFAR_STD)))
    state = convert.load_state_dict(_save(net, tmp_path / "net.pt"))
    model, report = convert.convert_state_dict(state, "wrn-10-1", 10)
    layer = model.get_layer("normalize")
    np.testing.assert_allclose(np.asarray(layer.mean).reshape(-1), CIFAR_MEAN, rtol=1e-6)
    np.testing.assert_allclose(
        np.sqrt(np.asarray(layer.variance)).reshape(-1), CIFAR_STD, rtol=1e-6
    )
    assert "mu" in report["normalize_source"]
    _assert_same_function(net, model)


def test_explicit_normalisation_conflicting_with_buffers_is_refused(tmp_path):
    net = _make_net(lambda c: TradesWideResNet(10, 1, c, buffers=(CIFAR_MEAN, CIFAR_STD)))
    state = convert.load_state_dict(_save(net, tmp_path / "net.pt"))
    with pytest.raises(convert.ConversionError, match="normalises inputs itself"):
        convert.convert_state_dict(
            state, "wrn-10-1", 10, normalize=((0.5, 0.5, 0.5), (0.5, 0.5, 0.5))
        )


# ---------------------------------------------------------------- refusals (CLI, exit code 2)


def _cli(args, capsys):
    code = convert.main([str(a) for a in args])
    return code, capsys.readouterr().err


@pytest.fixture
def wrn_state():
    return _make_net(NETWORKS["wrn-10-2"]).state_dict()


def test_missing_tensor_is_refused_and_named(tmp_path, capsys, wrn_state):
    del wrn_state["block2.layer.0.conv1.weight"]
    torch.save(wrn_state, tmp_path / "in.pt")
    code, err = _cli(
        ["--arch", "wrn-10-2", "--num-classes", "10", tmp_path / "in.pt", tmp_path / "out.keras"],
        capsys,
    )
    assert code == 2
    assert "missing" in err and "block2.layer.0.conv1.weight" in err
    assert os.listdir(tmp_path) == ["in.pt"]


def test_unexpected_tensor_is_refused_and_named(tmp_path, capsys, wrn_state):
    wrn_state["head.extra.weight"] = torch.zeros(3)
    torch.save(wrn_state, tmp_path / "in.pt")
    code, err = _cli(
        ["--arch", "wrn-10-2", "--num-classes", "10", tmp_path / "in.pt", tmp_path / "out.keras"],
        capsys,
    )
    assert code == 2
    assert "unexpected" in err and "head.extra.weight" in err
    assert os.listdir(tmp_path) == ["in.pt"]


def test_wrong_class_count_is_refused(tmp_path, capsys):
    torch.save(_make_net(NETWORKS["wrn-10-2"], num_classes=100).state_dict(), tmp_path / "in.pt")
    code, err = _cli(
        ["--arch", "wrn-10-2", "--num-classes", "10", tmp_path / "in.pt", tmp_path / "out.keras"],
        capsys,
    )
    assert code == 2
    assert "100 classes" in err and "fc.weight" in err and "num_classes=10" in err
    assert os.listdir(tmp_path) == ["in.pt"]


def test_shape_mismatch_is_refused_with_both_shapes(tmp_path, capsys, wrn_state):
    wrn_state["block3.layer.0.conv2.weight"] = torch.zeros(128, 128, 1, 1)
    torch.save(wrn_state, tmp_path / "in.pt")
    code, err = _cli(
        ["--arch", "wrn-10-2", "--num-classes", "10", tmp_path / "in.pt", tmp_path / "out.keras"],
        capsys,
    )
    assert code == 2
    assert (
        "block3.layer.0.conv2.weight" in err
        and "(128, 128, 1, 1)" in err
        and "(128, 128, 3, 3)" in err
    )
    assert os.listdir(tmp_path) == ["in.pt"]


def test_unknown_arch_is_refused(tmp_path, capsys, wrn_state):
    torch.save(wrn_state, tmp_path / "in.pt")
    code, err = _cli(
        ["--arch", "vgg-16", "--num-classes", "10", tmp_path / "in.pt", tmp_path / "out.keras"],
        capsys,
    )
    assert code == 2
    assert "vgg-16" in err and "wrn-34-10" in err
    assert os.listdir(tmp_path) == ["in.pt"]


@pytest.mark.parametrize(
    "name, content",
    [
        ("in.pt", b"a text file, not a checkpoint"),
        ("in.pt", b""),
        ("in.pth", bytes(range(256)) * 2),
        ("in.safetensors", b"junk"),
    ],
)
def test_a_file_that_is_not_a_checkpoint_is_refused_and_named(tmp_path, capsys, name, content):
    (tmp_path / name).write_bytes(content)
    code, err = _cli(
        ["--arch", "wrn-10-2", "--num-classes", "10", tmp_path / name, tmp_path / "out.keras"],
        capsys,
    )
    assert code == 2
    assert f"{tmp_path / name} is not a readable" in err and "nothing written" in err
    assert "Traceback" not in err
    assert os.listdir(tmp_path) == [name]


def test_missing_torch_names_the_install_command(tmp_path, monkeypatch):
    path = tmp_path / "in.pt"
    path.write_bytes(b"not read")
    monkeypatch.setitem(sys.modules, "torch", None)
    with pytest.raises(ImportError, match=r"pip install -e \.\[torch\]"):
        convert.load_state_dict(path)


def test_cli_module_writes_a_loadable_file_with_given_normalisation(tmp_path):
    net = _make_net(NETWORKS["wrn-10-2"])
    _save(net, tmp_path / "in.pt")
    out = tmp_path / "sub" / "teacher.keras"
    result = run_command(
        [
            sys.executable,
            "-m",
            "dgad_tf.teachers.convert",
            "--arch",
            "wrn-10-2",
            "--num-classes",
            "10",
            "--normalize-mean",
            ",".join(map(str, CIFAR_MEAN)),
            "--normalize-std",
            ",".join(map(str, CIFAR_STD)),
            str(tmp_path / "in.pt"),
            str(out),
        ],
        cwd=REPO,
    )
    assert result.returncode == 0, result.stderr
    assert os.listdir(out.parent) == ["teacher.keras"]  # no temporary file left behind
    model = keras.saving.load_model(out, safe_mode=True, compile=False)
    x = np.random.default_rng(4).uniform(size=(2, 32, 32, 3)).astype("float32")
    manual = (x - np.array(CIFAR_MEAN, "float32")) / np.array(CIFAR_STD, "float32")
    with torch.no_grad():
        expected = net(torch.tensor(manual.transpose(0, 3, 1, 2))).numpy()
    np.testing.assert_allclose(model(x, training=False), expected, atol=1e-4)


def test_full_size_wrn_34_10_converts(tmp_path):
    torch.manual_seed(0)
    net = TradesWideResNet(34, 10, 10).eval()
    out = tmp_path / "wrn.keras"
    model = convert.convert_checkpoint(_save(net, tmp_path / "wrn.pt"), "wrn-34-10", 10, out)
    assert sum(int(np.prod(w.shape)) for w in model.trainable_weights) == 46_160_474
    loaded = keras.saving.load_model(out, safe_mode=True, compile=False)
    x = np.random.default_rng(5).uniform(size=(1, 32, 32, 3)).astype("float32")
    with torch.no_grad():
        expected = net(torch.tensor(x.transpose(0, 3, 1, 2))).numpy()
    assert loaded(x, training=False).shape == (1, 10)
    np.testing.assert_allclose(loaded(x, training=False), expected, atol=1e-4)


def test_converted_teacher_loads_in_plain_keras_in_a_process_without_dgad_tf(tmp_path):
    # Users hand converted teachers to code that never imports dgad_tf.
    from plain_keras import assert_plain_keras_gives_dgad_tf_logits

    net = _make_net(NETWORKS["wrn-10-2"])
    out = tmp_path / "teacher.keras"
    convert.convert_checkpoint(
        _save(net, tmp_path / "net.pt"), "wrn-10-2", 10, out, normalize=(CIFAR_MEAN, CIFAR_STD)
    )
    assert_plain_keras_gives_dgad_tf_logits([out], tmp_path)


# ---------------------------------------------------------------- use in fit


def test_converted_teacher_distils_in_fit(tmp_path):
    from dgad_tf.fit import main

    net = _make_net(lambda c: TradesWideResNet(10, 1, c))
    pt = _save(net, tmp_path / "wrn.pt")
    teacher = tmp_path / "teacher.keras"
    convert.convert_checkpoint(str(pt), "wrn-10-1", 10, out_path=str(teacher))
    teacher_bytes = teacher.read_bytes()
    rng = np.random.default_rng(0)
    x_train = rng.integers(0, 256, (120, 32, 32, 3), dtype=np.uint8)
    x_test = rng.integers(0, 256, (20, 32, 32, 3), dtype=np.uint8)

    def torch_labels(x):
        # Labelled by the PyTorch network itself, so the teacher beats chance as fit demands.
        with torch.no_grad():
            return net(torch.tensor(x.transpose(0, 3, 1, 2) / np.float32(255))).argmax(1).numpy()

    np.savez(
        tmp_path / "data.npz",
        x_train=x_train,
        y_train=torch_labels(x_train),
        x_test=x_test,
        y_test=torch_labels(x_test),
    )
    run_dir = tmp_path / "run"
    overrides = [
        "data.source=npz",
        f"data.path={tmp_path / 'data.npz'}",
        "model.student=small-cnn",
        f"model.teacher_path={teacher}",
        "method.name=dgad",
        "train.epochs=1",
        "train.batch_size=36",
        "attack.steps=1",
        "train.val_robust_steps=1",
        "eval.n=20",
        "output.tensorboard=false",
        f"output.dir={run_dir}",
    ]
    argv = [arg for item in overrides for arg in ("--set", item)] + ["--quiet"]
    assert main(argv) == 0
    assert (run_dir / "student_last.keras").is_file()
    assert not (run_dir / "teacher_run").exists()  # loaded, not trained
    assert teacher.read_bytes() == teacher_bytes  # the converted file is only read
