"""Data-parallel training: strategy choice, chief-only writing, and exactness against one device.

Logical CPUs must be configured before TensorFlow initialises its devices, which other test
modules do first; so every test that needs two replicas runs a fresh Python process.
"""

import json
import os
import pathlib
import socket
import subprocess
import sys
import textwrap
import types

import numpy as np
import pytest
from subprocesses import run_command, watch

from dgad_tf import distribute
from dgad_tf.config import DistributeConfig

REPO = pathlib.Path(__file__).resolve().parents[1]


def _env(**extra):
    env = dict(os.environ, PYTHONPATH=str(REPO), TF_CPP_MIN_LOG_LEVEL="2")
    env.pop("TF_CONFIG", None)
    env.update(extra)
    return env


def _fake_strategy(replicas=1, task_type=None, task_id=None, cluster=None):
    resolver = None
    if task_type is not None:
        spec = types.SimpleNamespace(as_dict=lambda: cluster)
        resolver = types.SimpleNamespace(
            task_type=task_type, task_id=task_id, cluster_spec=lambda: spec
        )
    return types.SimpleNamespace(num_replicas_in_sync=replicas, cluster_resolver=resolver)


# --------------------------------------------------------------------------- in-process units


def test_global_batch_must_split_evenly_and_the_error_names_the_key():
    with pytest.raises(distribute.DistributeError, match=r"train\.batch_size=64"):
        distribute.check_global_batch(64, _fake_strategy(replicas=3))
    assert distribute.check_global_batch(63, _fake_strategy(replicas=3)) == 21


def test_batch_split_is_described_for_the_log():
    assert (
        distribute.describe_batch(64, _fake_strategy(replicas=2))
        == "global batch 64 = 2 replicas x 32"
    )


@pytest.mark.parametrize(
    "text, message",
    [
        (None, "needs the TF_CONFIG environment variable"),
        ("{not json", "not valid JSON"),
        ('{"cluster": {"worker": ["a:1"]}}', "needs `task`"),
        (
            '{"cluster": {"worker": ["a:1"]}, "task": {"type": "worker", "index": 1}}',
            r"`task.index` must be in \[0, 1\)",
        ),
        ('{"cluster": {"worker": ["a"]}, "task": {"type": "worker", "index": 0}}', "host:port"),
        ('{"cluster": {"worker": ["a:1"]}, "task": {"type": "ps", "index": 0}}', "`task.type`"),
    ],
)
def test_malformed_tf_config_is_a_clear_error(monkeypatch, text, message):
    monkeypatch.delenv("TF_CONFIG", raising=False)
    if text is not None:
        monkeypatch.setenv("TF_CONFIG", text)
    with pytest.raises(distribute.DistributeError, match=message):
        distribute.make_strategy(DistributeConfig(strategy="multi_worker"))


def test_well_formed_tf_config_is_accepted():
    text = (
        '{"cluster": {"chief": ["h0:1"], "worker": ["h1:1", "h2:1"]}, '
        '"task": {"type": "worker", "index": 1}}'
    )
    assert distribute.read_tf_config(text)["task"] == {"type": "worker", "index": 1}


@pytest.mark.parametrize(
    "task_type, task_id, cluster, chief",
    [
        (None, None, None, True),
        ("worker", 0, {"worker": ["a:1", "b:1"]}, True),
        ("worker", 1, {"worker": ["a:1", "b:1"]}, False),
        ("worker", 0, {"chief": ["c:1"], "worker": ["a:1"]}, False),
        ("chief", 0, {"chief": ["c:1"], "worker": ["a:1"]}, True),
    ],
)
def test_chief_is_the_chief_task_else_worker_zero(task_type, task_id, cluster, chief):
    assert distribute.is_chief(_fake_strategy(2, task_type, task_id, cluster)) is chief


def test_only_non_chief_workers_get_a_fixed_scratch_directory(tmp_path):
    cluster = {"worker": ["a:1", "b:1"]}
    chief = _fake_strategy(2, "worker", 0, cluster)
    other = _fake_strategy(2, "worker", 1, cluster)
    assert distribute.worker_run_dir(tmp_path / "run", chief) == tmp_path / "run"
    scratch = distribute.worker_run_dir(tmp_path / "run", other)
    assert scratch != tmp_path / "run" and scratch.name.endswith("-worker-1")
    assert distribute.worker_run_dir(tmp_path / "run", other) == scratch  # a restart finds it


def test_logical_cpus_after_device_initialisation_is_a_clear_error():
    import tensorflow as tf

    tf.constant(1.0) + 1.0  # devices are initialised from here on
    with pytest.raises(distribute.DistributeError, match="already initialised"):
        distribute.configure_logical_cpus(len(tf.config.list_logical_devices("CPU")) + 2)


# --------------------------------------------------------------------------- one step, 2 replicas

# Trains the same tiny networks from the same weights on the same global batch under the default
# strategy and under MirroredStrategy over 2 logical CPUs, and prints what differs. The attack
# starts at x (init "none"): a random start draws other numbers on two replicas than on one
# device (each replica runs its own random op on its half), so it cannot be compared exactly.
STEP_SCRIPT = textwrap.dedent('''
    import json
    from dgad_tf import distribute
    from dgad_tf.config import DistributeConfig
    mirrored = distribute.make_strategy(DistributeConfig(strategy="mirrored", logical_cpus=2))
    import keras, numpy as np, tensorflow as tf
    from dgad_tf import losses
    from dgad_tf.attacks import PGD
    from dgad_tf.distiller import AdversarialDistiller
    from dgad_tf.optim import TorchSGD

    SHAPE, CLASSES, BATCH = (8, 8, 1), 4, 16
    numpy = keras.ops.convert_to_numpy

    def net(width, bn, sync=False, name=None):
        inputs = keras.Input(SHAPE)
        x = keras.layers.Conv2D(width, 3, padding="same")(inputs)
        if bn:
            x = keras.layers.BatchNormalization(synchronized=sync)(x)
        x = keras.layers.ReLU()(x)
        x = keras.layers.GlobalAveragePooling2D()(x)
        return keras.Model(inputs, keras.layers.Dense(CLASSES)(x), name=name)

    class PerHalf(keras.layers.Layer):
        """`inner` on each half of the batch separately: the batch-norm statistics of 2 replicas."""
        def __init__(self, inner, **kwargs):
            super().__init__(**kwargs)
            self.inner = inner
        def call(self, x, training=False):
            return tf.concat([self.inner(h, training=training) for h in tf.split(x, 2)], 0)
        def compute_output_shape(self, shape):
            return (shape[0], CLASSES)

    def per_half(student):
        inputs = keras.Input(SHAPE)
        return keras.Model(inputs, PerHalf(student)(inputs), name="per_half")

    rng = np.random.default_rng(0)
    x = rng.uniform(0, 1, size=(2 * BATCH,) + SHAPE).astype(np.float32)
    y = rng.integers(0, CLASSES, size=2 * BATCH).astype(np.int64)
    keras.utils.set_random_seed(0)
    INIT = {key: [numpy(w) for w in net(width, bn).weights]
            for key, (width, bn) in {"plain": (8, False), "bn": (8, True),
                                     "teacher": (16, True)}.items()}

    def train(strategy, loss, bn, sync=False, split=False, steps=2):
        with strategy.scope():
            student = net(8, bn, sync, name="student")
            student.set_weights(INIT["bn" if bn else "plain"])
            initial = [numpy(w) for w in student.trainable_weights]
            teacher = net(16, True, name="teacher")
            teacher.set_weights(INIT["teacher"])
            distiller = AdversarialDistiller(
                teacher=teacher, student=per_half(student) if split else student, loss=loss,
                attack=PGD(eps=0.1, step_size=0.05, steps=2, start="none"), val_robust_steps=0)
            distiller.compile(optimizer=TorchSGD(0.1, momentum=0.9, weight_decay=5e-4))
        data = tf.data.Dataset.from_tensor_slices(
            (x[:steps * BATCH], y[:steps * BATCH])).batch(BATCH)
        history = distiller.fit(data, epochs=1, verbose=0, shuffle=False)
        copies = [strategy.experimental_local_results(v.value)
                  for v in student.non_trainable_weights]
        return dict(initial=initial, trainable=[numpy(w) for w in student.trainable_weights],
                    statistics=[numpy(w) for w in student.non_trainable_weights],
                    copies_spread=max([float(np.max(np.abs(numpy(c[0]) - numpy(c[-1]))))
                                       for c in copies] or [0.0]),
                    logs={k: float(v[-1]) for k, v in history.history.items()})

    def max_diff(a, b):
        return max([float(np.max(np.abs(u - v))) for u, v in zip(a, b)] or [0.0])

    out = {"replicas": mirrored.num_replicas_in_sync}
    default = tf.distribute.get_strategy()
    # case: (batch norm, synchronized, single device sees each half separately, train steps)
    cases = {"plain": (False, False, False, 2), "per_replica_bn": (True, False, True, 1),
             "sync_bn": (True, True, False, 2)}
    for method, loss in (("dgad", losses.DGAD()), ("adaad", losses.AdaAD())):
        for case, (bn, sync, split, steps) in cases.items():
            one = train(default, loss, bn, split=split, steps=steps)
            two = train(mirrored, loss, bn, sync=sync, steps=steps)
            out[f"{method}/{case}"] = dict(
                weights=max_diff(one["trainable"], two["trainable"]),
                moved=max_diff(one["trainable"], one["initial"]),
                statistics=max_diff(one["statistics"], two["statistics"]),
                copies_spread=two["copies_spread"], logs_one=one["logs"], logs_two=two["logs"])
    # The reference MobileNetV2 weighting multiplies two batch-wide sums: replicas all-reduce them.
    mnv2 = losses.DGAD(weighting="reference_mobilenetv2", reference_batch_size=BATCH)
    one = train(default, mnv2, False)
    two = train(mirrored, mnv2, False)
    out["dgad_mnv2/plain"] = dict(
        weights=max_diff(one["trainable"], two["trainable"]),
        moved=max_diff(one["trainable"], one["initial"]), logs_one=one["logs"],
        logs_two=two["logs"])
    print("RESULT " + json.dumps(out))
''')


@pytest.fixture(scope="module")
def step_results(tmp_path_factory):
    script = tmp_path_factory.mktemp("step") / "step.py"
    script.write_text(STEP_SCRIPT)
    proc = run_command(
        [sys.executable, str(script)],
        cwd=REPO,
        env=_env(),
    )
    lines = [line for line in proc.stdout.splitlines() if line.startswith("RESULT ")]
    assert proc.returncode == 0 and lines, proc.stderr[-3000:]
    return json.loads(lines[-1][len("RESULT ") :])


def _assert_same_step(entry):
    assert entry["moved"] > 1e-3, entry  # the step did change the weights
    assert entry["weights"] <= 1e-5, entry
    one, two = entry["logs_one"], entry["logs_two"]
    assert sorted(one) == sorted(two)
    for name in one:
        assert two[name] == pytest.approx(one[name], abs=1e-5), name


def test_the_step_script_ran_on_two_replicas(step_results):
    assert step_results["replicas"] == 2


@pytest.mark.parametrize("method", ["dgad", "adaad", "dgad_mnv2"])
def test_two_replicas_take_the_single_device_step_without_batch_norm(step_results, method):
    _assert_same_step(step_results[f"{method}/plain"])


@pytest.mark.parametrize("method", ["dgad", "adaad"])
def test_two_replicas_take_the_step_of_per_half_batch_norm_statistics(step_results, method):
    # Unsynchronised batch norm normalises each replica's half with that half's statistics:
    # the single-device reference runs the student on each half separately (one step, since the
    # moving statistics of that reference are updated one half after the other).
    _assert_same_step(step_results[f"{method}/per_replica_bn"])


@pytest.mark.parametrize("method", ["dgad", "adaad"])
def test_synchronised_batch_norm_takes_the_single_device_step(step_results, method):
    entry = step_results[f"{method}/sync_bn"]
    _assert_same_step(entry)
    assert entry["statistics"] <= 1e-5


@pytest.mark.parametrize("case", ["per_replica_bn", "sync_bn"])
def test_replicas_keep_identical_batch_norm_statistics(step_results, case):
    assert step_results[f"dgad/{case}"]["copies_spread"] == 0.0


# --------------------------------------------------------------------------- command line


def _fit(args, env=None):
    return run_command(
        [sys.executable, "-m", "dgad_tf.fit", "--quiet", *args],
        cwd=REPO,
        env=env or _env(),
    )


def test_indivisible_global_batch_fails_before_writing(tmp_path):
    out = tmp_path / "run"
    proc = _fit(
        [
            "--config",
            "configs/quickstart.yaml",
            "--set",
            "distribute.strategy=mirrored",
            "--set",
            "distribute.logical_cpus=2",
            "--set",
            "train.batch_size=63",
            "--set",
            f"output.dir={out}",
        ]
    )
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert "train.batch_size=63" in proc.stderr
    assert not out.exists()


def _free_port():
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


QUICK_ARGS = [
    "--config",
    "configs/quickstart.yaml",
    "--set",
    "method.name=pgd_at",
    "--set",
    "train.epochs=1",
    "--set",
    "data.train_limit=256",
    "--set",
    "train.val_robust_n=64",
    "--set",
    "eval.n=64",
    "--set",
    "eval.attacks=[clean]",
    "--set",
    "output.tensorboard=false",
]
# Deterministic attack start and synchronised batch norm: two workers must then take exactly
# the steps of one device on the same global batches. A 1e-6 attack: PGD's sign() turns the
# 1e-7 round-off of a different gradient-summation order into whole-step pixel flips, which at
# eps 0.1 left weight differences of ~1e-4 with PyTorch's initialisation (2e-8 without them);
# at eps 1e-6 a flip moves a pixel by 1e-6, below the comparison's tolerance.
EXACT_ARGS = [
    "--set",
    "attack.start=none",
    "--set",
    "model.sync_batchnorm=true",
    "--set",
    "attack.eps=1e-6",
    "--set",
    "attack.step_size=1e-6",
]


def _two_workers(tmp_path, out, extra=()):
    """Run `dgad_tf.fit` as a 2-worker MultiWorkerMirroredStrategy cluster on 127.0.0.1.

    Returns the two outputs and the scratch folder (TMPDIR) under which the non-chief worker
    keeps its run directory (DGAD_TF_KEEP_WORKER_DIR stops it from deleting it).
    """
    ports = [_free_port(), _free_port()]
    scratch = tmp_path / "tmp"
    scratch.mkdir(exist_ok=True)
    args = [
        *QUICK_ARGS,
        "--set",
        "distribute.strategy=multi_worker",
        "--set",
        f"output.dir={out}",
        "--quiet",
        *extra,
    ]
    procs, outputs = [], []
    try:
        for index in range(2):
            tf_config = json.dumps(
                {
                    "cluster": {"worker": [f"127.0.0.1:{p}" for p in ports]},
                    "task": {"type": "worker", "index": index},
                }
            )
            env = _env(
                TF_CONFIG=tf_config, TMPDIR=str(scratch), **{distribute.KEEP_WORKER_DIR_ENV: "1"}
            )
            procs.append(
                subprocess.Popen(
                    [sys.executable, "-m", "dgad_tf.fit", *args],
                    cwd=REPO,
                    env=env,
                    stdout=subprocess.PIPE,
                    stderr=subprocess.STDOUT,
                    text=True,
                    start_new_session=True,  # for the watchdog
                )
            )
        # The workers wait for each other: either one working is progress, both waiting a hang.
        outputs = [stdout for stdout, _ in watch(*procs)]
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    for proc, output in zip(procs, outputs):
        assert proc.returncode == 0, output[-3000:]
    worker_dirs = list((scratch / "dgad_tf_workers").glob("*-worker-1"))
    assert len(worker_dirs) == 1
    return outputs, worker_dirs[0]


def _weights(path):
    import keras

    return keras.models.load_model(path, compile=False).get_weights()


def _assert_same_weights(a, b, atol=0.0):
    assert len(a) == len(b)
    for left, right in zip(a, b):  # batch-norm statistics included
        np.testing.assert_allclose(left, right, rtol=0, atol=atol)


def test_two_workers_take_the_single_device_steps_and_only_the_chief_writes(tmp_path):
    out = tmp_path / "run"
    outputs, worker_dir = _two_workers(tmp_path, out, EXACT_ARGS)
    assert "global batch 64 = 2 replicas x 32" in outputs[0]
    assert (out / "student_last.keras").exists() and (out / "train_state.npz").exists()
    assert not any(p.name.startswith("worker") for p in out.iterdir())
    chief = _weights(out / "student_last.keras")
    _assert_same_weights(chief, _weights(worker_dir / "student_last.keras"))
    # DATA sharding gives each worker its own half of every global batch: together they train
    # as one device does (a worker seeing the other's half would not).
    single = tmp_path / "single"
    proc = _fit(
        [
            *QUICK_ARGS,
            *EXACT_ARGS,
            "--set",
            "distribute.strategy=none",
            "--set",
            f"output.dir={single}",
        ]
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    _assert_same_weights(chief, _weights(single / "student_last.keras"), atol=1e-5)


def test_restarted_workers_resume_from_their_own_state(tmp_path):
    # Default attack start and unsynchronised batch norm: the replicas' statistics are averaged
    # every step, so the workers still end bit-identical.
    out = tmp_path / "run"
    _, worker_dir = _two_workers(tmp_path, out)
    _assert_same_weights(
        _weights(out / "student_last.keras"), _weights(worker_dir / "student_last.keras")
    )
    outputs, _ = _two_workers(tmp_path, out)
    for output in outputs:
        assert "already finished 1 epochs" in output, output[-2000:]


# ------------------------------------------------------------------ first batch, 2 replicas

# The first-batch checks run in Python on the undistributed batch before Keras distributes it:
# under MirroredStrategy they refuse and warn as on one device, and a dict batch trains.
FIRST_BATCH_SCRIPT = textwrap.dedent("""
    import json, warnings
    from dgad_tf import distribute
    from dgad_tf.config import DistributeConfig
    mirrored = distribute.make_strategy(DistributeConfig(strategy="mirrored", logical_cpus=2))
    import keras, numpy as np, tensorflow as tf
    from dgad_tf import losses
    from dgad_tf.attacks import PGD
    from dgad_tf.distiller import AdversarialDistiller
    from dgad_tf.optim import TorchSGD

    def net(name, activation=None):
        inputs = keras.Input((6, 6, 1), name="image")
        x = keras.layers.GlobalAveragePooling2D()(keras.layers.Conv2D(4, 3)(inputs))
        return keras.Model(inputs, keras.layers.Dense(4, activation=activation)(x), name=name)

    keras.utils.set_random_seed(0)
    rng = np.random.default_rng(0)
    x = rng.uniform(0, 1, (16, 6, 6, 1)).astype(np.float32)
    y = rng.integers(0, 4, 16)

    def fit(data, teacher_activation=None):
        with mirrored.scope():
            distiller = AdversarialDistiller(
                teacher=net("teacher", teacher_activation), student=net("student"),
                loss=losses.DGAD(), attack=PGD(eps=0.1, steps=1))
            distiller.compile(optimizer=TorchSGD(0.05))
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            try:
                distiller.fit(tf.data.Dataset.from_tensor_slices(data).batch(8), verbose=0)
                error = None
            except ValueError as err:
                error = str(err)
        return dict(replicas=mirrored.num_replicas_in_sync, error=error,
                    steps=int(keras.ops.convert_to_numpy(distiller.optimizer.iterations)),
                    chance_warned=any("chance level" in str(w.message) for w in caught))

    out = {"softmax_teacher": fit((x, y), "softmax"),
           "one_hot": fit((x, np.eye(4, dtype=np.float32)[y])),
           "dict": fit(({"image": x}, y))}
    print("RESULT " + json.dumps(out))
""")


def test_first_batch_checks_refuse_and_a_dict_batch_trains_under_two_replicas(tmp_path):
    script = tmp_path / "first_batch.py"
    script.write_text(FIRST_BATCH_SCRIPT)
    proc = subprocess.run(
        [sys.executable, str(script)],
        cwd=REPO,
        env=_env(),
        capture_output=True,
        text=True,
        timeout=600,
    )
    lines = [line for line in proc.stdout.splitlines() if line.startswith("RESULT ")]
    assert proc.returncode == 0 and lines, proc.stderr[-3000:]
    out = json.loads(lines[-1][len("RESULT ") :])
    assert {entry["replicas"] for entry in out.values()} == {2}
    assert "teacher 'teacher' returns probabilities" in out["softmax_teacher"]["error"]
    assert "one-hot" in out["one_hot"]["error"]
    for case in ("softmax_teacher", "one_hot"):
        assert out[case]["steps"] == 0
    # An untrained teacher is at chance on random labels: warned, and the batches train.
    assert out["dict"]["error"] is None and out["dict"]["steps"] == 2
    assert out["dict"]["chance_warned"]
