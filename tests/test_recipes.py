"""Every shipped recipe and CIFAR-10 study runs end to end on a CIFAR-10 subset (tiny networks).

The recipe's method, loss scales, forward order, selection rule, partial batches and evaluation
columns are kept; only the sizes shrink: a small CNN student, a few hundred real CIFAR-10 images,
1 epoch, 2 attack steps, and (where the recipe distils) a small teacher trained here on real
CIFAR-10 so that it clears the chance-level check. Needs ../shared/data/cifar10 (skips without).
"""

import csv
import json
import pathlib

import keras
import numpy as np
import pytest
import yaml

from dgad_tf.config import load_config, read_sections
from dgad_tf.fit import main

pytestmark = pytest.mark.slow

REPO = pathlib.Path(__file__).resolve().parents[1]


# Each shipped config as the loader reads it; a `study:` section makes it a study for `compare`.
SHIPPED = {p.name: read_sections(p) for p in sorted((REPO / "configs").glob("*.yaml"))}
RECIPES = [
    name
    for name, values in SHIPPED.items()
    if not name.startswith(("quickstart", "tune_")) and "study" not in values
]
CIFAR_STUDIES = [
    name
    for name, values in SHIPPED.items()
    if "study" in values and values.get("data", {}).get("source") == "npz"
]


@pytest.fixture(scope="module")
def cifar_subset(shared_cifar10, tmp_path_factory):
    """An npz folder of 250 training and 64 test CIFAR-10 images, and a teacher trained on more."""
    folder = tmp_path_factory.mktemp("cifar_subset")
    with (
        np.load(shared_cifar10 / "train_20k.npz") as train,
        np.load(shared_cifar10 / "test.npz") as test,
    ):
        order = np.random.default_rng(0).permutation(len(train["y"]))
        x, y = train["x"][order], train["y"][order].astype(np.int64)
        np.savez(folder / "train.npz", x=x[:250], y=y[:250])
        np.savez(folder / "test.npz", x=test["x"][:64], y=test["y"][:64].astype(np.int64))
    keras.utils.set_random_seed(0)
    inputs = keras.Input((32, 32, 3))
    hidden = keras.layers.Conv2D(32, 3, padding="same", activation="relu")(inputs)
    hidden = keras.layers.MaxPooling2D()(hidden)
    hidden = keras.layers.Conv2D(64, 3, padding="same", activation="relu")(hidden)
    hidden = keras.layers.GlobalAveragePooling2D()(hidden)
    teacher = keras.Model(inputs, keras.layers.Dense(10)(hidden))
    teacher.compile(
        keras.optimizers.Adam(3e-3), keras.losses.SparseCategoricalCrossentropy(from_logits=True)
    )
    teacher.fit(x[:4000] / 255.0, y[:4000], epochs=4, batch_size=128, verbose=0)
    teacher.save(folder / "teacher.keras")
    return folder


@pytest.mark.parametrize("recipe", RECIPES)
def test_recipe_runs_on_a_cifar10_subset(recipe, cifar_subset, tmp_path):
    cfg = load_config(REPO / "configs" / recipe)
    out = tmp_path / "run"
    overrides = [
        "data.source=npz",
        f"data.path={cifar_subset}",
        "data.name=null",
        "model.student=small-cnn",
        f"model.teacher_path={cifar_subset / 'teacher.keras'}",
        "train.epochs=1",
        "train.batch_size=32",
        "attack.steps=2",
        "train.val_robust_steps=2",
        "train.select_n=64",
        "eval.n=32",
        "optimizer.milestones=[]",
        "output.tensorboard=false",
        f"output.dir={out}",
        # IAD's and AdaIAD's introspection from the first (only) epoch.
        *(["method.warmup_epochs=0"] if hasattr(cfg.method, "warmup_epochs") else []),
        # The recipe's columns but AutoAttack (minutes on CPU; tested in test_autoattack).
        "eval.attacks=[" + ",".join(a for a in cfg.eval.attacks if a != "autoattack") + "]",
    ]
    args = ["--config", str(REPO / "configs" / recipe), "--quiet"]
    for item in overrides:
        args += ["--set", item]
    assert main(args) == 0
    report = json.loads((out / "report.json").read_text())
    assert report["method"] == cfg.method.name
    assert report["student"]["selection"]["rule"] == cfg.train.select
    assert set(report["student"]["attacks"]) == {a for a in cfg.eval.attacks if a != "autoattack"}
    assert "student_last" in report
    assert ("teacher" in report) == cfg.method.loss.needs_teacher
    # 250 images in batches of 32: 7 full batches and the partial one when the recipe keeps it.
    steps = 8 if not cfg.train.drop_remainder else 7
    assert len(report["history"]) == 1
    with np.load(out / "train_state.npz") as state:
        meta = json.loads(str(state["meta"]))
    assert meta["epoch"] == 1
    optimizer_iterations = [v for k, v in state_arrays(out).items() if k.startswith("optimizer_")]
    assert steps in {int(v) for v in optimizer_iterations if np.ndim(v) == 0}


def test_recipes_and_studies_are_told_apart():
    assert "compare_cifar10_cpu.yaml" in CIFAR_STUDIES
    assert not set(RECIPES) & set(CIFAR_STUDIES)
    assert "cifar10_cpu_teacher.yaml" in RECIPES


@pytest.mark.parametrize("name", CIFAR_STUDIES)
def test_cifar10_study_runs_on_a_cifar10_subset(name, cifar_subset, tmp_path):
    """Every method with its own `set:`, one seed, the study's protocol without AutoAttack."""
    from dgad_tf.compare import main as compare_main
    from dgad_tf.study import load_study

    path = REPO / "configs" / name
    shipped = load_study(path)
    out = tmp_path / "study"
    overrides = [
        f"data.path={cifar_subset}",
        "data.train_limit=null",
        "data.val_fraction=0.25",  # 62 of the 250 images, enough for the teacher check
        "model.student=small-cnn",
        f"model.teacher_path={cifar_subset / 'teacher.keras'}",
        "train.epochs=1",
        "train.batch_size=32",
        "attack.steps=2",
        "train.val_robust_n=32",
        "train.val_robust_steps=2",
        "optimizer.milestones=[]",
        f"output.dir={out}",
        "study.seeds=[0]",
        "study.n=32",
        "study.attacks=["
        + ",".join(a for a in shipped.protocol.attacks if a != "autoattack")
        + "]",
    ]
    if shipped.primary and shipped.primary["attack"] == "autoattack":
        # The declared comparison moves to the last attack kept (AutoAttack is left out here).
        kept = [a for a in shipped.protocol.attacks if a != "autoattack"][-1]
        primary = {**shipped.primary, "attack": kept}
        overrides.append(
            "study.primary={" + ", ".join(f"{k}: {v}" for k, v in primary.items()) + "}"
        )
    args = ["--config", str(path), "--quiet"]
    for item in overrides:
        args += ["--set", item]
    assert compare_main(args) == 0
    methods = [m.name for m in shipped.methods]
    with (out / "results.csv").open() as f:
        rows = list(csv.DictReader(f))
    assert [row["method"] for row in rows] == methods
    assert {row["seed"] for row in rows} == {"0"}
    digests = set()
    for entry, row in zip(shipped.methods, rows):
        cell = pathlib.Path(row["run_dir"])
        evaluation = json.loads((cell / "study_eval.json").read_text())
        digests.add(evaluation["images_sha256"])
        assert float(row["clean_accuracy"]) == pytest.approx(evaluation["clean_accuracy"], abs=1e-4)
        # The cell trained its method with the study's own `set:` for it on top of the base.
        cfg = yaml.safe_load((cell / "config.yaml").read_text())
        assert cfg["method"]["name"] == entry.method
        for item in entry.overrides:
            key, value = item.split("=", 1)
            section, field = key.split(".")
            assert same_value(cfg[section][field], value), item
    assert len(digests) == 1
    summary = json.loads((out / "summary.json").read_text())
    assert set(summary["methods"]) == set(methods)


def same_value(written, text: str) -> bool:
    """A config value as config.yaml wrote it equals the `--set` text (1e-5 is a float there)."""
    if isinstance(written, bool) or not isinstance(written, int | float):
        return str(written).lower() == text.lower()
    return written == pytest.approx(float(text))


def state_arrays(run_dir):
    with np.load(run_dir / "train_state.npz") as state:
        return {key: state[key] for key in state.files if key != "meta"}
