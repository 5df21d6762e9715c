"""The benchmarks compare equal work: their PyTorch steps must agree with ours."""

import importlib.util
import json
import os
import pathlib

import numpy as np
import pytest

torch = pytest.importorskip("torch")

BENCHMARKS = pathlib.Path(__file__).resolve().parents[1] / "benchmarks"


def _load(name):
    spec = importlib.util.spec_from_file_location(f"bench_{name}", BENCHMARKS / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def torch_compare():
    """benchmarks/torch_compare (the two sides of vs_pytorch.py), as the script imports it."""
    _load("vs_pytorch")  # puts benchmarks/ and the repository root first on sys.path
    import torch_compare.dgad
    import torch_compare.parity
    import torch_compare.timing

    return torch_compare


@pytest.mark.parity
def test_one_dgad_step_agrees_with_pytorch(torch_compare):
    # Two PGD steps on a batch of 4: loss, updated weights and the attack itself must match.
    check = torch_compare.parity.check_one_step(
        "small-cnn", "small-cnn", batch_size=4, steps=2, seed=3
    )
    assert check["params_ours"] == check["params_torch"]
    assert check["loss_abs_diff"] <= torch_compare.parity.LOSS_TOLERANCE
    assert check["weights_ok"], check["weight_failures"]
    # Far inside the benchmark's tolerance on this small network, whose logits are well apart.
    assert check["update_max_rel_diff"] < 1e-4
    assert check["max_abs_diff"]["trainable"] < 1e-5
    assert check["max_abs_diff"]["moving_mean"] < 1e-5
    # PyTorch's running_var update (unbiased batch variance), not Keras's biased one (~1e-2 here).
    assert check["moving_variance_max_rel_diff"] < 1e-5
    assert check["one_step_fraction_differing"] == 0.0
    assert check["x_adv_fraction_differing"] == 0.0
    assert abs(check["attack_objective_ours"] - check["attack_objective_torch"]) < 1e-4
    assert check["passed"]


@pytest.mark.parity
def test_check_fails_when_the_steps_differ(torch_compare, monkeypatch):
    # A different PCR weight on the PyTorch side must be caught, so the check can fail.
    original = torch_compare.dgad.dgad_loss_torch
    monkeypatch.setattr(
        torch_compare.dgad, "dgad_loss_torch", lambda *a, **k: original(*a, beta=2.0) + 1e-3
    )
    check = torch_compare.parity.check_one_step(
        "small-cnn", "small-cnn", batch_size=4, steps=1, seed=3
    )
    assert not check["passed"]


@pytest.mark.parity
def test_torch_dgad_loss_matches_ours(torch_compare):
    # The PyTorch loss of the benchmark against dgad_tf.losses.dgad_loss, with MAP and ELS hit.
    from dgad_tf.losses import dgad_loss

    rng = np.random.default_rng(0)
    logits = [rng.normal(size=(16, 10)).astype(np.float32) * 3 for _ in range(4)]
    labels = rng.integers(0, 10, size=16)
    ours = float(dgad_loss(*logits, labels)["total"])
    theirs = float(
        torch_compare.dgad.dgad_loss_torch(
            *(torch.from_numpy(v) for v in logits), torch.from_numpy(labels)
        )
    )
    assert abs(ours - theirs) < 1e-6


def test_kernel_time_sums_and_overlaps_the_marked_primitives():
    # Hand-made oneDNN v3 lines: two overlapping convolutions and a reorder inside "ours",
    # one line outside any marker (ignored), an untimestamped PyTorch step.
    kernel_time = _load("kernel_time")
    lines = [
        "onednn_verbose,v1,5.0,primitive,exec,cpu,reorder,jit:uni,undef,src,,,64x3,9.0",
        "@@kernel_time begin ours",
        "onednn_verbose,v1,100.0,primitive,exec,cpu,convolution,brg,forward_training,a,b,c,d,4.0",
        "onednn_verbose,v1,102.0,primitive,exec,cpu,convolution,brg,forward_training,a,b,c,d,4.0",
        "onednn_verbose,v1,110.0,primitive,exec,cpu,reorder,jit:uni,undef,src,,,64x3,1.0",
        "onednn_verbose,v1,info,cpu,runtime:threadpool,nthr:2",
        "@@kernel_time end ours 0.020",
        "@@kernel_time begin pytorch",
        "onednn_verbose,v1,primitive,exec,cpu,convolution,jit,backward_data,a,b,c,d,3.0",
        "onednn_verbose,v1,primitive,exec,cpu,convolution,jit,backward_data,a,b,c,d,2.0",
        "@@kernel_time end pytorch 0.010",
    ]
    steps = kernel_time.parse_verbose(lines)
    (ours,), (theirs,) = steps["ours"], steps["pytorch"]
    assert ours["wall"] == 0.020 and theirs["wall"] == 0.010
    assert np.isclose(ours["onednn"], 0.009)
    # [100, 104] and [102, 106] overlap into 6 ms; [110, 111] adds 1 ms.
    assert np.isclose(ours["busy"], 0.007)
    assert ours["kinds"] == {
        "convolution brg forward_training": 0.008,
        "reorder jit:uni undef": 0.001,
    }
    # Without start times the intervals cannot be overlapped: busy falls back to the sum.
    assert np.isclose(theirs["busy"], 0.005) and np.isclose(theirs["onednn"], 0.005)
    wall, busy, summed, ranked = kernel_time.summarize(steps["ours"], top=1)
    assert wall == 0.020 and np.isclose(busy, 0.007) and np.isclose(summed, 0.009)
    assert ranked == [("convolution brg forward_training", 0.008)]


def test_kernel_time_child_sees_onednn_in_both_steps(monkeypatch):
    # The verbose child runs both steps of a tiny config; both frameworks' convolutions must
    # show up between the markers, inside the step's wall time.
    kernel_time = _load("kernel_time")
    args = kernel_time.parse_args(
        ["--configs", "small-cnn:small-cnn", "--batch-size", "4", "--steps", "1", "--iters", "1"]
    )
    if os.environ.get("TF_ENABLE_ONEDNN_OPTS") == "0":
        # With oneDNN switched off by hand the benchmark must say so and how to turn it on.
        with pytest.raises(RuntimeError, match="TF_ENABLE_ONEDNN_OPTS=1"):
            kernel_time.kernel_times(args, args.configs[0])
        monkeypatch.setenv("TF_ENABLE_ONEDNN_OPTS", "1")
    steps = kernel_time.kernel_times(args, args.configs[0])
    for side in ("ours", "pytorch"):
        (step,) = steps[side]
        assert any(kind.startswith("convolution") for kind in step["kinds"]), step["kinds"]
        # Timestamps are printed to the microsecond: abutting intervals may overlap by ~1 us.
        assert 0 < step["busy"] <= step["onednn"] * 1.01 + 1e-4
        assert step["busy"] <= step["wall"] + 1e-3


def test_bfloat16_steps_run_both_sides_networks_in_bfloat16(torch_compare):
    # `--precision mixed_bfloat16` must change the arithmetic on both sides, not only a label.
    from dgad_tf.precision import policy_name

    distiller, step = torch_compare.timing.build_steps(
        "small-cnn", "small-cnn", 1, 0, "cpu", "mixed_bfloat16"
    )
    assert policy_name(distiller.student) == policy_name(distiller.teacher) == "mixed_bfloat16"
    seen = []
    for net in (step.student, step.teacher):
        net.conv2.register_forward_hook(lambda module, inputs, out: seen.append(out.dtype))
    x, y = torch_compare.timing.random_batch(4, 0)
    loss = step(*torch_compare.timing.torch_batch(x, y, "cpu"))
    assert np.isfinite(loss)
    # Attack: 1 step x 2 networks; training: student x 2, teacher x 2.
    assert seen == [torch.bfloat16] * 6
    logs = distiller.train_on_batch(x, y, return_dict=True)
    assert np.isfinite(logs["loss"])


def test_channels_last_torch_step_is_the_same_step_in_nhwc(torch_compare):
    # `--torch-channels-last` may only change PyTorch's memory layout: from the same weights and
    # the same x', one step gives the same loss and weights as the NCHW step, with the
    # convolutions really computed on channels_last tensors.
    _, nchw = torch_compare.timing.build_steps("small-cnn", "small-cnn", 1, 0, "cpu")
    _, nhwc = torch_compare.timing.build_steps(
        "small-cnn", "small-cnn", 1, 0, "cpu", channels_last=True
    )
    layouts = []
    nhwc.student.conv2.register_forward_hook(
        lambda module, inputs, out: layouts.append(
            out.is_contiguous(memory_format=torch.channels_last) and not out.is_contiguous()
        )
    )
    x, y = torch_compare.timing.random_batch(4, 0)
    x_t, y_t = torch_compare.timing.torch_batch(x, y, "cpu")
    x_adv = (x_t + 0.01).clamp(0.0, 1.0)
    losses = [step(x_t, y_t, x_adv=x_adv) for step in (nchw, nhwc)]
    assert layouts == [True, True]
    assert abs(losses[0] - losses[1]) < 1e-6
    for a, b in zip(nchw.student.parameters(), nhwc.student.parameters()):
        assert torch.allclose(a, b, atol=1e-6)


def test_network_throughput_reports_each_network_relative_to_the_first(capsys):
    bench = _load("network_throughput")
    args = ["--networks", "small-cnn,wrn-10-1", "--batch-size", "4", "--image-size", "8"]
    assert bench.main([*args, "--iters", "1", "--rounds", "2"]) == 0
    lines = capsys.readouterr().out.splitlines()
    rows = {line.split()[0]: line.split() for line in lines[2:]}
    assert set(rows) == {"small-cnn", "wrn-10-1"}
    assert float(rows["small-cnn"][3]) == 1.0  # the first network against itself
    assert int(rows["wrn-10-1"][1]) > 0 and float(rows["wrn-10-1"][2]) > 0


def _where_it_ran_ok(machine):
    """Check a result's CPU fields against /proc/cpuinfo and TensorFlow; return its line."""
    from tensorflow.python.util import _pywrap_util_port

    from dgad_tf import cpu

    assert machine["onednn"] is bool(_pywrap_util_port.IsMklEnabled())
    assert machine["TF_ENABLE_ONEDNN_OPTS"] == os.environ.get("TF_ENABLE_ONEDNN_OPTS")
    if pathlib.Path("/proc/cpuinfo").exists():
        text = pathlib.Path("/proc/cpuinfo").read_text()
        assert machine["cpu_model"] and machine["cpu_model"] in text
        flags = next(line for line in text.splitlines() if line.startswith("flags")).split()
        assert set(machine["vector_extensions"]) == set(cpu.VECTOR_EXTENSIONS) & set(flags)
    return cpu.summary(machine)


TINY_PAIR = ["--configs", "small-cnn:small-cnn", "--batch-size", "2", "--steps", "1"]


def test_step_throughput_results_say_where_they_ran(tmp_path, capsys):
    bench = _load("step_throughput")
    out = tmp_path / "steps.json"
    args = ["--student", "small-cnn", "--teacher", "small-cnn", "--methods", "dgad"]
    args += ["--batch-size", "2", "--steps", "1", "--warmup", "1", "--iters", "1"]
    args += ["--repeats", "1", "--xla", "off", "--eager-iters", "0", "--out", str(out)]
    assert bench.main(args) == 0
    summary = _where_it_ran_ok(json.loads(out.read_text())["machine"])
    assert summary in capsys.readouterr().out


def test_vs_pytorch_results_say_where_they_ran(tmp_path, capsys, monkeypatch):
    bench = _load("vs_pytorch")
    # Thread counts are fixed once per process: this test's TensorFlow is already running.
    monkeypatch.setattr(bench, "set_threads", lambda threads: None)
    # The equality check runs; the timed rounds are canned: only the result is under test.
    timing = dict(
        rounds=[],
        first_call_seconds=1.0,
        ours_images_per_second=3.0,
        torch_images_per_second=2.0,
        ratio_of_medians=1.5,
        median_of_paired_ratios=1.5,
    )
    monkeypatch.setattr(bench, "time_config", lambda *a: timing)
    out = tmp_path / "vs.json"
    assert bench.main([*TINY_PAIR, "--rounds", "1", "--iters", "1", "--out", str(out)]) == 0
    summary = _where_it_ran_ok(json.loads(out.read_text())["machine"])
    assert summary in capsys.readouterr().out


def test_kernel_time_output_says_where_it_ran(capsys, monkeypatch):
    # Only the printing is under test: the timed rounds and the logging child are canned.
    bench = _load("kernel_time")
    monkeypatch.setattr(bench, "set_threads", lambda threads: None)
    rounds = [dict(ours_seconds=1.0, torch_seconds=1.5)]
    monkeypatch.setattr(
        bench, "time_config", lambda *a: dict(rounds=rounds, median_of_paired_ratios=1.5)
    )
    step = dict(wall=1.0, onednn=0.9, busy=0.8, kinds={"convolution brg forward": 0.9})
    monkeypatch.setattr(bench, "kernel_times", lambda *a: dict(ours=[step], pytorch=[step]))
    assert bench.main(TINY_PAIR) == 0
    # The line after the settings: this CPU and this process's oneDNN state.
    assert capsys.readouterr().out.splitlines()[1] == bench.cpu.summary(bench.cpu.describe())
