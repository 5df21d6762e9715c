"""The commands' promise, path by path: exit 2 and a message naming the problem before any work,
nothing written by a refused command, one writer per folder.

Each test drives a command's real `main` (the code `python -m dgad_tf.<command>` runs).
"""

import json
import pathlib
import sys

import keras
import numpy as np
import pytest
from serving_helpers import write_broken_model
from subprocesses import run_command

from dgad_tf import evaluate as evaluate_cli
from dgad_tf import export as export_cli
from dgad_tf import fit as fit_cli
from dgad_tf import serving
from dgad_tf.rundir import FolderLock

REPO = pathlib.Path(__file__).resolve().parents[1]


def tiny_model(constant=False):
    inputs = keras.Input((8, 8, 1))
    x = keras.layers.Flatten()(inputs)
    if constant:
        # Ignores the image: always class 3.
        dense = keras.layers.Dense(
            10,
            kernel_initializer="zeros",
            bias_initializer=keras.initializers.Constant(np.eye(10)[3].astype(np.float32)),
        )
    else:
        dense = keras.layers.Dense(10)
    return keras.Model(inputs, dense(x))


@pytest.fixture(scope="module")
def run_folder(tmp_path_factory):
    """A run folder trained at eps 0.1 (its config.yaml says so) with a student checkpoint."""
    path = tmp_path_factory.mktemp("run")
    tiny_model().save(path / "student_last.keras")
    (path / "config.yaml").write_text(
        "data:\n  source: digits\nattack:\n  eps: 0.1\n  step_size: 0.025\n"
    )
    return path


def listing(folder):
    folder = pathlib.Path(folder)
    return (
        sorted(str(p.relative_to(folder)) for p in folder.rglob("*")) if folder.exists() else None
    )


# --------------------------------------------------------------------------- export


def export(model, out, *flags):
    """`python -m dgad_tf.export --model MODEL --out OUT FLAGS...`, its exit code."""
    return export_cli.main(["--model", str(model), "--out", str(out), *flags])


@pytest.mark.parametrize(
    "flags, message",
    [
        (["--version", "0"], "--version: must be >= 1"),
        (["--version", "-2"], "--version: must be >= 1"),
        (["--formats", "onnx"], "--formats"),
        (["--eval-n", "-3"], "--eval-n: must be >= 0"),
    ],
)
def test_export_refuses_bad_flags_with_exit_2(run_folder, tmp_path, capsys, flags, message):
    with pytest.raises(SystemExit) as exit_info:
        export(run_folder, tmp_path / "m", *flags)
    assert exit_info.value.code == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "m").exists()


def test_export_refuses_an_existing_version_before_working(run_folder, tmp_path, capsys):
    (tmp_path / "m" / "4").mkdir(parents=True)
    code = export(
        str(run_folder), str(tmp_path / "m"), "--version", "4", "--formats", "tflite_float"
    )
    assert code == 2
    assert "--version 4 already exists" in capsys.readouterr().err
    assert listing(tmp_path / "m") == ["4"]


def test_export_names_a_missing_model_first(tmp_path, capsys):
    code = export(tmp_path / "runs" / "nope", tmp_path / "m")
    assert code == 2
    err = capsys.readouterr().err
    assert "no model at" in err and "calibration" not in err
    assert not (tmp_path / "m").exists()


@pytest.mark.parametrize("kind", ["file", "under_a_file"])
def test_export_refuses_an_unwritable_out(run_folder, tmp_path, capsys, kind):
    blocker = tmp_path / "blocker"
    blocker.write_text("a file")
    out = blocker if kind == "file" else blocker / "m"
    code = export(run_folder, out, "--formats", "tflite_float")
    assert code == 2
    assert "--out" in capsys.readouterr().err
    assert blocker.read_text() == "a file"


def test_a_second_exporter_of_the_same_base_path_is_refused(run_folder, tmp_path, capsys):
    with FolderLock(tmp_path / "m", "export folder"):
        code = export(
            str(run_folder), str(tmp_path / "m"), "--formats", "tflite_float", "--eval-n", "0"
        )
    assert code == 2
    assert "being written by" in capsys.readouterr().err
    assert listing(tmp_path / "m") == []


def test_export_removes_temporaries_of_a_killed_export(run_folder, tmp_path):
    stale = tmp_path / "m" / ".tmp-1-abc123"
    (stale / "variables").mkdir(parents=True)
    code = export(
        str(run_folder), str(tmp_path / "m"), "--formats", "tflite_float", "--eval-n", "0"
    )
    assert code == 0
    assert listing(tmp_path / "m") == ["1", "1/model_card.json", "1/model_float32.tflite"]


def test_export_defaults_to_the_runs_eps(run_folder, tmp_path):
    code = export(
        str(run_folder), str(tmp_path / "m"), "--formats", "tflite_float", "--eval-n", "20"
    )
    assert code == 0
    card = json.loads((tmp_path / "m" / "1" / "model_card.json").read_text())
    assert card["evaluation"]["eps"] == pytest.approx(0.1)


def test_a_student_at_chance_level_exports_with_a_warning(tmp_path):
    from sklearn.datasets import load_digits

    data = load_digits()
    x = np.round(data.images[:300] / 16.0 * 255.0).astype(np.uint8)[..., None]
    card = serving.export_student(
        tiny_model(constant=True),
        tmp_path / "m",
        formats=("tflite_float",),
        eval_arrays=(x, data.target[:300]),
    )
    assert card["parity"]["tflite_float"]["max_abs_diff_probabilities"] < 1e-4
    (warning,) = card["warnings"]
    assert "chance level" in warning
    written = json.loads((tmp_path / "m" / "1" / "model_card.json").read_text())
    assert written["warnings"] == card["warnings"]
    learned = serving.export_student(
        tiny_model(),
        tmp_path / "n",
        formats=("tflite_float",),
        eval_arrays=(x[:0], data.target[:0]),
    )
    assert "warnings" not in learned


# --------------------------------------------------------------------------- evaluate


@pytest.mark.parametrize(
    "flags, message",
    [
        (["--batch-size", "0"], "--batch-size: must be >= 1"),
        (["--restarts", "0"], "--restarts: must be >= 1"),
        (["--n", "0"], "--n: must be >= 1"),
    ],
)
def test_evaluate_refuses_bad_numbers_with_exit_2(run_folder, capsys, flags, message):
    with pytest.raises(SystemExit) as exit_info:
        evaluate_cli.main(["--model", str(run_folder)] + flags)
    assert exit_info.value.code == 2
    assert message in capsys.readouterr().err


def test_evaluate_checks_out_before_attacking(run_folder, tmp_path, capsys, monkeypatch):
    attacked = []
    from dgad_tf import robustness

    monkeypatch.setattr(robustness, "evaluate_robustness", lambda *a, **k: attacked.append(1))
    blocker = tmp_path / "blocker"
    blocker.write_text("a file")
    code = evaluate_cli.main(["--model", str(run_folder), "--out", str(blocker / "report.json")])
    assert code == 2
    assert "--out" in capsys.readouterr().err
    assert attacked == []


def test_evaluate_refuses_an_npz_without_the_needed_keys(run_folder, tmp_path, capsys):
    np.savez(tmp_path / "bad.npz", images=np.zeros((4, 8, 8, 1), np.uint8))
    code = evaluate_cli.main(["--model", str(run_folder), "--data", str(tmp_path / "bad.npz")])
    assert code == 2
    assert "lacks key(s)" in capsys.readouterr().err


def test_evaluate_takes_a_single_xy_npz_and_the_runs_eps(run_folder, tmp_path, capsys, caplog):
    rng = np.random.default_rng(0)
    np.savez(
        tmp_path / "test.npz",
        x=rng.integers(0, 256, (12, 8, 8, 1), dtype=np.uint8),
        y=rng.integers(0, 10, 12),
    )
    out = tmp_path / "report.json"
    with caplog.at_level("INFO"):
        code = evaluate_cli.main(
            [
                "--model",
                str(run_folder),
                "--data",
                str(tmp_path / "test.npz"),
                "--attacks",
                "clean,pgd2",
                "--out",
                str(out),
            ]
        )
    assert code == 0
    report = json.loads(out.read_text())
    assert report["n"] == 12
    assert report["eps"] == pytest.approx(0.1)
    assert "eps=0.100000 (the run's attack.eps)" in caplog.text


def test_every_help_shows_the_defaults(capsys):
    for module in (evaluate_cli, export_cli, fit_cli):
        with pytest.raises(SystemExit):
            module.main(["--help"])
        assert "(default:" in capsys.readouterr().out, module.__name__


# --------------------------------------------------------------------------- fit


@pytest.mark.parametrize(
    "override, key",
    [
        ("eval.attacks=[clean,foo]", "eval.attacks"),
        ("export.formats=[onnx]", "export.formats"),
        ("eval.attacks=[pgd0]", "eval.attacks"),
        ("attack.steps=0", "attack.steps"),
        ("attack.eps=0", "attack.eps"),
        ("attack.step_size=0.2", "attack.step_size"),
    ],
)
def test_fit_refuses_at_load_time_what_it_would_fail_on_later(tmp_path, capsys, override, key):
    code = fit_cli.main(
        [
            "--config",
            str(REPO / "configs" / "quickstart.yaml"),
            "--set",
            f"output.dir={tmp_path / 'run'}",
            "--set",
            override,
        ]
    )
    assert code == 2
    assert f"`{key}`" in capsys.readouterr().err
    assert not (tmp_path / "run").exists()


def test_a_second_fit_on_the_same_folder_is_refused(tmp_path, capsys):
    run = tmp_path / "run"
    with FolderLock(run, "output.dir"):
        code = fit_cli.main(
            ["--config", str(REPO / "configs" / "quickstart.yaml"), "--set", f"output.dir={run}"]
        )
    assert code == 2
    assert "being written by" in capsys.readouterr().err
    assert listing(run) == []


def test_fit_refuses_a_softmax_teacher_before_writing_anything(tmp_path, capsys):
    # A teacher saved with its final softmax: its "logits" are probabilities. The distiller
    # would refuse it on its first batch; the command refuses it before the run folder exists.
    teacher = keras.Sequential(
        [
            keras.Input((8, 8, 1)),
            keras.layers.Flatten(),
            keras.layers.Dense(10, activation="softmax"),
        ]
    )
    path = tmp_path / "softmax_teacher.keras"
    teacher.save(path)
    run = tmp_path / "run"
    config = str(REPO / "configs" / "quickstart.yaml")
    code = fit_cli.main(
        ["--config", config, "--set", f"model.teacher_path={path}", "--set", f"output.dir={run}"]
    )
    err = capsys.readouterr().err
    assert code == 2 and "Traceback" not in err
    assert f"model.teacher_path: the teacher {path} returns probabilities" in err
    assert "without its final softmax" in err
    assert listing(run) is None  # the run folder was never made


def test_a_fit_whose_export_fills_the_disk_ends_in_one_line_and_exit_2(
    tmp_path, capsys, monkeypatch
):
    # `export.formats` exports at the end of a run (run._export, serving.export_student); a full
    # disk there is named as `python -m dgad_tf.export` names it, not as a traceback.
    import errno

    from dgad_tf import run as run_module

    message = "no space left on the disk mounted at /x while writing /x/m: needs about 2 MB"

    def run_that_fills_the_disk(cfg, **kwargs):
        raise serving.ExportDiskFull(errno.ENOSPC, message)

    monkeypatch.setattr(run_module, "run", run_that_fills_the_disk)
    config = str(REPO / "configs" / "quickstart.yaml")
    assert fit_cli.main(["--config", config, "--set", f"output.dir={tmp_path / 'run'}"]) == 2
    err = capsys.readouterr().err
    assert err.strip() == f"error: {message}" and "Traceback" not in err


@pytest.mark.parametrize("where", ["under_a_file", "read_only_file_system"])
def test_fit_refuses_an_output_dir_it_cannot_create(tmp_path, capsys, where):
    if where == "under_a_file":
        blocker = tmp_path / "blocker"
        blocker.write_text("a file")
        run = blocker / "run"
    else:
        # sysfs refuses new folders even to root: the read-only case a test can reach.
        run = pathlib.Path("/sys/dgad_tf_test_run")
        if not pathlib.Path("/sys").is_dir():
            pytest.skip("no /sys on this machine")
    code = fit_cli.main(
        ["--config", str(REPO / "configs" / "quickstart.yaml"), "--set", f"output.dir={run}"]
    )
    assert code == 2
    err = capsys.readouterr().err
    assert f"output.dir {run} cannot be written" in err and "Traceback" not in err
    assert not run.exists()


def evaluate_in_a_new_process(*args):
    """`python -m dgad_tf.evaluate ARGS` in a fresh interpreter; returns the CompletedProcess."""
    return run_command(
        [sys.executable, "-m", "dgad_tf.evaluate", *args],
        cwd=REPO,
    )


def test_commands_start_without_tensorflows_noise(run_folder):
    proc = evaluate_in_a_new_process("--model", str(run_folder), "--attacks", "clean", "--n", "5")
    assert proc.returncode == 0, proc.stderr
    noise = [
        line
        for line in proc.stderr.splitlines()
        if "absl::InitializeLog" in line or "cuda" in line.lower() or "oneDNN" in line
    ]
    assert noise == []


def test_evaluate_loads_a_zoo_network_saved_by_another_process(tmp_path):
    # A fresh interpreter has not imported dgad_tf.models: loading must register the zoo's
    # FusedBatchNormalization itself, or Keras cannot find the class.
    from dgad_tf.models import build_model

    path = tmp_path / "student.keras"
    build_model("small-cnn", 10, (8, 8, 1)).save(path)
    proc = evaluate_in_a_new_process(
        "--model", str(path), "--data", "digits", "--attacks", "clean", "--n", "5"
    )
    assert proc.returncode == 0, proc.stderr
    assert "clean=" in proc.stdout


def test_a_second_search_on_the_same_folder_is_refused(tmp_path, capsys):
    from dgad_tf import tune as tune_cli

    out = tmp_path / "search"
    with FolderLock(out, "search folder"):
        code = tune_cli.main(
            ["--config", str(REPO / "configs" / "tune_quickstart.yaml"), "--out", str(out)]
        )
    assert code == 2
    assert "being written by" in capsys.readouterr().err
    assert listing(out) == []


@pytest.mark.parametrize("kind", ["folder", "text", "truncated"])
def test_fit_names_a_teacher_file_that_is_not_a_keras_archive(tmp_path, capsys, kind):
    teacher = tmp_path / "teacher.keras"
    write_broken_model(teacher, kind, tiny_model())
    code = fit_cli.main(
        [
            "--config",
            str(REPO / "configs" / "quickstart.yaml"),
            "--set",
            f"output.dir={tmp_path / 'run'}",
            "--set",
            f"model.teacher_path={teacher}",
        ]
    )
    assert code == 2
    err = capsys.readouterr().err
    assert "model.teacher_path" in err and "File not found" not in err
    assert ("is a folder" if kind == "folder" else "not a .keras archive") in err
    assert not (tmp_path / "run").exists()


def test_print_config_of_a_paper_recipe_says_what_the_run_reproduces(capsys):
    import yaml

    assert (
        fit_cli.main(
            ["--config", str(REPO / "configs" / "cifar10_resnet18_dgad.yaml"), "--print-config"]
        )
        == 0
    )
    out = capsys.readouterr().out
    comments = [line for line in out.splitlines() if line.startswith("#")]
    assert "all 50,000 of cifar10's train split; last partial batch kept" in comments[0]
    assert "train.select=best_test" in comments[1] and "TEST split" in comments[1]
    assert (
        "pgd10 (the reference's PGD)" in comments[2] and "cw_l2 (the reference's CW)" in comments[2]
    )
    printed = yaml.safe_load(out)  # the comments leave it a valid config
    assert printed["data"]["val_fraction"] == 0 and printed["train"]["select"] == "best_test"


def test_log_csv_reading_skips_a_repeated_header(tmp_path):
    from dgad_tf.rundir import read_log

    log_csv = tmp_path / "log.csv"
    log_csv.write_text(
        "epoch,loss,val_robust_accuracy\n1,0.5,0.2\nepoch,loss,val_robust_accuracy\n2,0.4,NA\n"
    )
    assert read_log(log_csv) == [
        {"epoch": 1.0, "loss": 0.5, "val_robust_accuracy": 0.2},
        {"epoch": 2.0, "loss": 0.4, "val_robust_accuracy": None},
    ]


def test_fit_prints_one_plain_line_per_epoch_when_stdout_is_not_a_terminal(tmp_path):
    command = [
        sys.executable,
        "-m",
        "dgad_tf.fit",
        "--config",
        str(REPO / "configs" / "quickstart.yaml"),
    ]
    for item in (
        "method.name=clean",
        "train.epochs=2",
        "data.train_limit=256",
        "train.val_robust_n=64",
        "eval.n=64",
        "eval.attacks=[clean]",
        "output.tensorboard=false",
        f"output.dir={tmp_path / 'run'}",
    ):
        command += ["--set", item]
    proc = run_command(command, cwd=REPO)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "\r" not in proc.stdout and "\x08" not in proc.stdout
    assert [line for line in proc.stdout.splitlines() if line.startswith("Epoch ")] == [
        "Epoch 1/2",
        "Epoch 2/2",
    ]


# --------------------------------------------------------------------------- before TensorFlow

# Runs a command's `main` in a fresh interpreter, then says whether TensorFlow had been imported
# by the time it returned: a refusal that needs no TensorFlow must come before it loads.
REFUSAL_PROBE = """
import importlib, sys
module = importlib.import_module(sys.argv[1])
try:
    code = module.main(sys.argv[2:])
except SystemExit as exit:
    code = exit.code
print("tensorflow imported:", "tensorflow" in sys.modules)
sys.exit(code)
"""


def _study_file(folder, **data):
    path = folder / "study.yaml"
    values = {
        "data": data,
        "output": {"dir": str(folder / "study")},
        "study": {"methods": ["pgd_at"], "seeds": [0]},
    }
    path.write_text(json.dumps(values))  # JSON is YAML
    return path


@pytest.mark.parametrize(
    "command, message",
    [
        ("evaluate --model {run} --eps 2", "`--eps` must be in [0, 1]"),
        ("evaluate --model {run} --n 0", "--n: must be >= 1"),
        ("evaluate --model {run} --data {tmp}/missing.npz", "--data {tmp}/missing.npz does not"),
        ("evaluate --model {tmp}/missing.keras", "no model at {tmp}/missing.keras"),
        ("evaluate --model {tmp}/bad_run/student_last.keras", "data.path {tmp}/gone.npz does"),
        ("fit --set data.source=npz --set data.path={tmp}/gone.npz", "data.path {tmp}/gone.npz"),
        (
            "fit --set method.name=adaad --set teacher_train.epochs=0 --set output.dir={tmp}/r",
            "no teacher at {tmp}/r/teacher.keras",
        ),
        ("compare --config {tmp}/study.yaml", "data.path {tmp}/gone.npz does not exist"),
        (
            "tune --config configs/tune_quickstart.yaml --set data.source=npz "
            "--set data.path={tmp}/gone.npz --out {tmp}/search",
            "data.path {tmp}/gone.npz does not exist",
        ),
        ("export --model {tmp}/missing.keras --out {tmp}/e", "no model at {tmp}/missing.keras"),
        ("export --model {run} --out {tmp}/e --eval-data {tmp}/gone.npz", "--eval-data {tmp}/gone"),
        ("export --model {tmp}/bad_run --out {tmp}/e", "data.path {tmp}/gone.npz does not exist"),
    ],
)
def test_refusals_that_need_no_tensorflow_come_before_it_loads(
    run_folder, tmp_path, command, message
):
    # A run folder whose config names a data file that is gone.
    bad_run = tmp_path / "bad_run"
    bad_run.mkdir()
    tiny_model().save(bad_run / "student_last.keras")
    (bad_run / "config.yaml").write_text(f"data:\n  source: npz\n  path: {tmp_path}/gone.npz\n")
    _study_file(tmp_path, source="npz", path=str(tmp_path / "gone.npz"))
    name, *args = command.format(run=run_folder, tmp=tmp_path).split()
    before = listing(tmp_path)
    result = run_command([sys.executable, "-c", REFUSAL_PROBE, f"dgad_tf.{name}", *args], cwd=REPO)
    assert result.returncode == 2, result.stderr[-2000:]
    assert message.format(tmp=tmp_path) in result.stderr
    assert "tensorflow imported: False" in result.stdout
    assert listing(tmp_path) == before


# --------------------------------------------------------------------------- console scripts


def _console_scripts():
    """`setup.py`'s CONSOLE_SCRIPTS, read without running setup()."""
    import ast

    tree = ast.parse((REPO / "setup.py").read_text())
    for node in tree.body:
        if isinstance(node, ast.Assign) and node.targets[0].id == "CONSOLE_SCRIPTS":
            entries = ast.literal_eval(node.value)
            return dict((part.strip() for part in entry.split("=")) for entry in entries)
    raise AssertionError("setup.py defines no CONSOLE_SCRIPTS")


def _command_modules():
    """Every `dgad_tf` module that runs as `python -m` through a `main` of its own."""
    modules = set()
    for path in (REPO / "dgad_tf").rglob("*.py"):
        text = path.read_text()
        if "def main(" in text and 'if __name__ == "__main__":' in text:
            modules.add(".".join(path.relative_to(REPO).with_suffix("").parts))
    return modules


def test_every_command_has_a_console_script_that_resolves_to_its_main(capsys):
    import importlib

    scripts = _console_scripts()
    targets = {}
    for script, target in scripts.items():
        module_name, _, attr = target.partition(":")
        assert script.startswith("dgad-"), script
        main = getattr(importlib.import_module(module_name), attr)
        assert callable(main), target
        # The script runs the command itself: its --help is the command's, with exit code 0.
        with pytest.raises(SystemExit) as exit_info:
            main(["--help"])
        assert exit_info.value.code == 0
        assert f"python -m {module_name}" in capsys.readouterr().out, script
        targets[module_name] = script
    assert set(targets) == _command_modules()
