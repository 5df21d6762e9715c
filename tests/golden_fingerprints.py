"""The golden fingerprint of a shipped config: what a run, a study or a search of it would do.

`fingerprint(config_path)` resolves a file of `configs/` through the public objects a run builds
(`load_config` / `load_study`, the loss object and the `PGD` attack of the distiller that
`dgad_tf.build.build_distiller` makes, its optimiser and `EpochSchedule`, the learning rates
`python -m dgad_tf.fit --print-lr` prints, the selection rule, the evaluation attacks) and returns
them as plain JSON values: no training, no data that is not shipped (only the embedded digits
are loaded, to hash which images each split and evaluation uses), tiny dense stand-in networks
where the distiller needs networks at all.

The fingerprint names what things ARE (a loss class and its fields, an attack's radius and start,
the forwards in order), never how a config file spells them, so that a redesign of the config
and of the objects changes this function only, and `tests/golden/*.json` stay byte-identical.
`tests/test_golden_fingerprints.py` recomputes every one and compares; regenerating a golden file
(`tests/golden/make_fingerprints.py`) is a behaviour change to justify in the commit message.

A run trains from its config alone, the teacher it trains from its own (`Config.teacher_config`),
so both distillers are read from configs. Where today's code gives no object to read, this
function mirrors its caller, and a change there goes unseen: the per-epoch learning rates (the
student's as `fit --print-lr` prints them, the teacher's from its config's optimiser section),
and the settings of the evaluation and validation attacks beyond their report descriptions (their
arithmetic is checked by the attack and reference tests).
"""

from __future__ import annotations

import functools
import json
import pathlib

import numpy as np

REPO = pathlib.Path(__file__).resolve().parents[1]
CONFIGS = REPO / "configs"
GOLDEN = pathlib.Path(__file__).resolve().parent / "golden"


# The methods whose built-in defaults (no config file, `--set method.name=<method>`) are pinned
# too: `fit --set method.name=trades` trains with them, whichever object comes to hold them.
DEFAULT_METHODS = ("clean", "pgd_at", "trades", "ard", "rslad", "adaad", "iad", "adaiad", "dgad")
# The name of the Python API's defaults (`fingerprint(None)`) among them.
PYTHON_API = "python_api"


def golden_path(config_path, method=None) -> pathlib.Path:
    """The golden file of a config (`tests/golden/<config stem>.json`), or of the built-in
    defaults of `method` when `config_path` is None (`tests/golden/defaults/<method>.json`;
    `defaults/python_api.json` with neither)."""
    if config_path is None:
        return GOLDEN / "defaults" / f"{method or PYTHON_API}.json"
    return GOLDEN / f"{pathlib.Path(config_path).stem}.json"


def canonical_json(value) -> str:
    """`value` as the golden files hold it: sorted keys, one-space indent, floats by `repr`.

    Python's `json` writes a float with `float.__repr__`, the shortest text that reads back to
    the same double, so equal text means equal values bit for bit (and 6 and 6.0 differ).
    """
    return json.dumps(_plain(value), sort_keys=True, indent=1, allow_nan=False) + "\n"


def _plain(value):
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if value is None or isinstance(value, (bool, str)):
        return value
    if isinstance(value, (int, np.integer)):
        return int(value)
    if isinstance(value, (float, np.floating)):
        return float(value)
    raise TypeError(f"a fingerprint holds JSON values only; received {value!r}")


def flatten(value, prefix: str = "") -> dict:
    """{dotted path: leaf} of a fingerprint; list items as `key[i]`, empty containers as leaves."""
    if isinstance(value, dict) and value:
        items = {}
        for key in sorted(value):
            items.update(flatten(value[key], f"{prefix}.{key}" if prefix else str(key)))
        return items
    if isinstance(value, list) and value:
        items = {}
        for index, item in enumerate(value):
            items.update(flatten(item, f"{prefix}[{index}]"))
        return items
    return {prefix: value}


def differences(golden, current) -> list[str]:
    """Readable lines `key: golden X, now Y` (an int and an equal float differ)."""
    old, new = flatten(golden), flatten(current)
    lines = []
    for key in sorted(set(old) | set(new)):
        if key not in new:
            lines.append(f"`{key}`: golden {old[key]!r}, now missing")
        elif key not in old:
            lines.append(f"`{key}`: not in the golden file, now {new[key]!r}")
        elif (type(old[key]), repr(old[key])) != (type(new[key]), repr(new[key])):
            lines.append(f"`{key}`: golden {old[key]!r}, now {new[key]!r}")
    return lines


# --------------------------------------------------------------------------- the fingerprint


def fingerprint(config_path, method=None) -> dict:
    """Everything a shipped config makes a run (a study, a search) do, as JSON values.

    A fit recipe gives {"kind": "fit", "run": ...}; a file with a `tune:` space adds the search
    ({"kind": "tune", "search": ...}); a study file (a `study:` section) gives every cell's run
    in training order and the study's protocol ({"kind": "study", ...}).

    `fingerprint(None, method)` is the run of the config's built-in defaults with that method
    (`fit --set method.name=<method>` without a file), and `fingerprint(None)` what the Python API
    does by default: every loss class of `dgad_tf.losses` made with no argument, in an
    `AdversarialDistiller` given nothing else ({"kind": "python_defaults", ...}).

    Args:
        config_path: a YAML file of `configs/`, or None for the built-in defaults.
        method: with `config_path` None, the method of the config's defaults to run. Defaults
            to None (the Python API's defaults).
    """
    from dgad_tf.config import load_config, read_sections

    if config_path is None and method is None:
        return _python_defaults()
    if config_path is None:
        return {"kind": "fit", "run": _run(load_config(None, [f"method.name={method}"]))}
    if "study" in read_sections(config_path):
        return _study(config_path)
    cfg = load_config(config_path)
    if cfg.tune.space:
        return {"kind": "tune", "run": _run(cfg), "search": _search(cfg)}
    return {"kind": "fit", "run": _run(cfg)}


def _run(cfg) -> dict:
    """A run of `cfg` (`dgad_tf.run.run`): data, networks, teacher, training, selection, report."""
    from dgad_tf import fit

    t, m = cfg.train, cfg.model
    splits = _digits(cfg.data)
    training = _training(cfg, rates=fit.student_learning_rates(cfg))
    return {
        "data": _data(cfg, splits),
        "student": {
            "network": m.student,
            "init": m.init,
            "normalize": None if m.normalize_mean is None else [m.normalize_mean, m.normalize_std],
            "sync_batchnorm": m.sync_batchnorm,
        },
        "teacher": _teacher(cfg) if cfg.method.loss.needs_teacher else None,
        "training": training,
        "seed": t.seed,
        "batch_size": t.batch_size,
        "precision": t.precision,
        "jit_compile": t.jit_compile,
        "steps_per_execution": t.steps_per_execution,
        "distribution": {
            "strategy": cfg.distribute.strategy,
            "devices": list(cfg.distribute.devices),
            "logical_cpus": cfg.distribute.logical_cpus,
        },
        "selection": _selection(cfg, splits),
        "evaluation": _evaluation(
            cfg.eval.attacks,
            eps=cfg.attack.eps,
            n=cfg.eval.n,
            batch_size=cfg.eval.batch_size,
            seed=t.seed,
            splits=splits,
        ),
        "export": {"formats": list(cfg.export.formats), "dir": cfg.export.dir},
        "output": {"dir": cfg.output.dir, "tensorboard": cfg.output.tensorboard},
    }


def _training(cfg, *, rates) -> dict:
    """What `run.train_network` trains with: the distiller `build.build_distiller` compiles
    from the config of the run (a student's, or a teacher's `Config.teacher_config`).

    The networks are tiny dense stand-ins: the loss, the attack, the forwards, the logged terms
    and the optimiser do not depend on them.
    """
    from dgad_tf import build

    distiller = build.build_distiller(
        cfg,
        student=_stand_in(),
        teacher=_stand_in() if cfg.method.loss.needs_teacher else None,
        steps_per_epoch=1,
    )
    optimizer = distiller.optimizer.get_config()
    schedule = optimizer["learning_rate"]
    return {
        "method": cfg.method.name,
        "epochs": cfg.train.epochs,
        **_step(distiller),
        "optimizer": {
            "class": _registered_name(distiller.optimizer),
            "momentum": optimizer["momentum"],
            "weight_decay": optimizer["weight_decay"],
            "nesterov": optimizer["nesterov"],
            "schedule": {
                "class": schedule["registered_name"],
                **{
                    key: value
                    for key, value in schedule["config"].items()
                    if key != "steps_per_epoch"  # the data's size, not the recipe's
                },
            },
        },
        "learning_rate_per_epoch": rates,
    }


def _step(distiller) -> dict:
    """What a distiller's train step does: its loss, its attack and start, its forwards, its
    logged metrics."""
    loss, attack = distiller.method_loss, distiller.attack
    reference = distiller.reference_forwards
    later = loss.forwards_added_after_warmup(reference)
    return {
        "loss": {"class": _registered_name(loss), "options": loss.get_config()},
        "attack": {
            "class": _registered_name(attack),
            "options": attack.get_config(),
            "start": distiller.attack_start,
            "ascends": None if loss.ascent is None else loss.ascent.formula,
            "student_mode": "training"
            if reference and loss.reference_train_mode_attack
            else "inference",
        },
        "reference_forwards": reference,
        "student_forwards": [_forward(f) for f in loss.student_forwards(reference)],
        "student_forwards_added_after_warmup": [_forward(f) for f in later],
        "logged_metrics": [metric.name for metric in distiller.metrics],
    }


def _python_defaults() -> dict:
    """What the Python API does with every default: each loss class of `dgad_tf.losses` made
    with no argument, in an `AdversarialDistiller` with no other argument than the networks.
    A class with a required field (`IGDM`, which wraps another loss) has no such default."""
    import dataclasses

    from dgad_tf import losses
    from dgad_tf.distiller import AdversarialDistiller

    def required(cls):
        return any(
            f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING
            for f in dataclasses.fields(cls)
        )

    classes = [
        getattr(losses, name)
        for name in losses.__all__
        if isinstance(getattr(losses, name), type)
        and issubclass(getattr(losses, name), losses.MethodLoss)
        and getattr(losses, name) is not losses.MethodLoss
        and not required(getattr(losses, name))
    ]
    steps = {}
    for cls in classes:
        loss = cls()
        try:  # the distiller refuses a teacher the loss does not use, and the reverse
            distiller = AdversarialDistiller(student=_stand_in(), loss=loss)
        except ValueError:
            distiller = AdversarialDistiller(teacher=_stand_in(), student=_stand_in(), loss=loss)
        steps[_registered_name(loss)] = {
            "needs_teacher": distiller.teacher is not None,
            "val_robust_steps": distiller.val_robust_steps,
            "seed": distiller.seed,
            **_step(distiller),
        }
    return {"kind": "python_defaults", "distillers": steps}


def _forward(forward) -> dict:
    return {"input": forward.kind, "used": forward.used}


def _registered_name(obj) -> str:
    import keras

    return keras.saving.get_registered_name(type(obj))


def _stand_in():
    import keras

    inputs = keras.Input((4,))
    hidden = keras.layers.Dense(4)(inputs)
    return keras.Model(inputs, keras.layers.Dense(10)(hidden))


def _teacher(cfg) -> dict:
    """The teacher a run loads from its path, or trains there first when it is missing."""
    from dgad_tf import optim, rundir

    trained = None
    if cfg.teacher_train.epochs > 0:
        # `run.obtain_teacher`: train_network with the teacher run's own config.
        teacher_cfg = rundir.teacher_run_config(cfg, pathlib.Path(cfg.output.dir))
        t, o = teacher_cfg.train, teacher_cfg.optimizer
        trained = _training(
            teacher_cfg,
            rates=optim.epoch_learning_rates(
                o.lr,
                epochs=t.epochs,
                schedule=o.schedule,
                milestones=o.milestones,
                gamma=o.gamma,
            ),
        )
    return {
        "network": cfg.model.teacher,
        "path": str(rundir.teacher_path_for(cfg, pathlib.Path(cfg.output.dir))),
        "trained_when_missing": trained,
    }


@functools.lru_cache(maxsize=None)
def _digits(data_cfg):
    """The splits of the embedded digits (shipped with scikit-learn); None for other sources."""
    from dgad_tf import data

    return data.splits_from_config(data_cfg) if data_cfg.source == "digits" else None


def _images(arrays, n=None):
    """Count and sha256 (`study.images_digest`) of the first n images of a split."""
    from dgad_tf.study import images_digest

    x, y = arrays.x[:n], arrays.y[:n]
    return {"n": int(len(y)), "sha256": images_digest(x, y)}


def _data(cfg, splits) -> dict:
    d = cfg.data
    loaded = None
    if splits is not None:
        loaded = {
            "num_classes": splits.num_classes,
            "image_shape": list(splits.image_shape),
            "train": _images(splits.train),
            "val": _images(splits.val),
            "test": _images(splits.test),
        }
    return {
        "source": d.source,
        "name": d.name,
        "path": d.path,
        "data_dir": d.data_dir,
        "val_fraction": d.val_fraction,
        "split_seed": d.seed,
        "train_limit": d.train_limit,
        "test_limit": d.test_limit,
        "image_size": d.image_size,
        "augment": d.augment,
        "crop_padding": d.crop_padding,
        "flip": d.flip,
        "drop_remainder": cfg.train.drop_remainder,
        # Only the embedded digits are loaded; CIFAR and the rest are not shipped.
        "loaded": loaded,
    }


def _selection(cfg, splits) -> dict:
    """`train.select`: the checkpoint reported, the metric that picks it and what it scores."""
    from dgad_tf import callbacks, rundir, selection

    t = cfg.train
    rule = selection.SELECTION_RULES.get(t.select)
    metric = rule.metric
    checkpoint = rule.checkpoint if metric else rundir.LAST_CHECKPOINT
    selection = {
        "rule": t.select,
        "metric": metric,
        "checkpoint": checkpoint,
        # The distiller's test_step: clean and PGD accuracy on the first val_robust_n images.
        "validation": {
            "every": t.val_every,
            "n": t.val_robust_n,
            "pgd_steps": t.val_robust_steps,
            "images": None if splits is None else _images(splits.val, t.val_robust_n),
        },
        "test_n": None,
        "test_images": None,
        "test_attack": None,
    }
    if t.select in ("best_test", "rslad_pgd20"):
        selection["test_n"] = t.select_n
        if splits is not None:
            selection["test_images"] = _images(splits.test, t.select_n)
    if t.select == "rslad_pgd20":
        rule = callbacks.PeriodicTestPGD.rslad(None, eps=cfg.attack.eps, seed=t.seed)
        selection["test_attack"] = {
            "eps": rule.eps,
            "step_size": rule.step_size,
            "steps": rule.steps,
            "metric": rule.metric,
            "seed": rule.seed,
            "epochs": [e for e in range(1, t.epochs + 1) if rule.evaluated_epochs(e)],
        }
    return selection


def _evaluation(attacks, *, eps, n, batch_size, seed, splits) -> dict:
    """The report's attacks (`robustness.evaluate_robustness`) on the first n test images."""
    from dgad_tf import robustness
    from dgad_tf.config import check_attack_names

    names = check_attack_names(attacks)
    return {
        "attacks": [
            {
                "name": name,
                "description": robustness.attack_description(name),
            }
            for name in names
        ],
        "eps": eps,
        "n": n,
        "batch_size": batch_size,
        "seed": seed,
        "images": None if splits is None else _images(splits.test, n),
    }


def _study(config_path) -> dict:
    """A study (`dgad_tf.study`): its protocol, its teacher and every cell's run, in order."""
    from dgad_tf.study import load_study

    study = load_study(config_path)
    p = study.protocol
    splits = _digits(study.base.data)
    return {
        "kind": "study",
        "folder": str(study.folder),
        "methods": [{"name": e.name, "method": e.method} for e in study.methods],
        "seeds": list(study.seeds),
        "reference": study.reference,
        "protocol": _evaluation(
            p.attacks, eps=p.eps, n=p.n, batch_size=p.batch_size, seed=p.seed, splits=splits
        ),
        "teacher": _teacher(study.base) if study.needs_teacher else None,
        # Keyed "<training order>_<method>_seed<seed>", so that sorted keys keep the order.
        "cells": {
            f"{index:02d}_{cell.entry.name}_seed{cell.seed}": {
                "method": cell.entry.name,
                "seed": cell.seed,
                "folder": str(cell.folder),
                "run": _run(cell.cfg),
            }
            for index, cell in enumerate(study.cells(), start=1)
        },
    }


def _search(cfg) -> dict:
    """A search (`dgad_tf.search`): objective, tuner, trial schedule and what each dimension sets.

    A dimension is named by what it changes in the run's fingerprint (e.g.
    `training.loss.options.beta`), found by fingerprinting the trial config at its bounds.
    """
    from dgad_tf import fit, tuning
    from dgad_tf.config import with_values

    tune = cfg.tune
    base = flatten(_run(cfg))
    space = []
    for key, dimension in tune.space.items():
        changes = set()
        for value in dimension.extremes():
            trial = flatten(_run(with_values(cfg, {key: value})))
            changes |= {
                _collapse_index(k)
                for k in set(base) | set(trial)
                if base.get(k, ...) != trial.get(k, ...)
            }
        space.append({"dimension": dimension.to_dict(), "changes": sorted(changes)})
    hypermodel = tuning.DistillerHyperModel(cfg, None, None)
    trial = tuning.compress_schedule(with_values(cfg, {}), hypermodel.epochs)
    return {
        "objective": tune.metric,
        "weights": list(tune.weights),
        "tuner": tune.tuner,
        "max_trials": tune.max_trials,
        "seed": tune.seed,
        "space": space,
        "trial": {
            "epochs": hypermodel.epochs,
            "learning_rate_per_epoch": fit.student_learning_rates(trial),
            "milestones": list(trial.optimizer.milestones),
            "warmup_epochs": trial.optimizer.warmup_epochs,
            "validation_epochs": tuning.validation_epochs(
                0, hypermodel.epochs, trial.train.val_every
            ),
        },
        "folder": cfg.output.dir,
    }


def _collapse_index(key: str) -> str:
    import re

    return re.sub(r"\[\d+\]", "[*]", key)
