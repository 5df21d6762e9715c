"""Config: defaults, YAML and --set overrides, named errors, the CLI's exit code 2."""

import pathlib

import pytest
import yaml

from dgad_tf.config import (
    Config,
    ConfigError,
    config_from_dict,
    load_config,
    parse_fraction,
    parse_override,
    with_values,
)

CONFIGS = pathlib.Path(__file__).resolve().parents[1] / "configs"


def test_defaults_are_the_paper_recipe():
    cfg = load_config()
    assert cfg.attack.eps == pytest.approx(8 / 255)
    assert cfg.attack.step_size == pytest.approx(2 / 255)
    assert cfg.attack.steps == 10
    assert (cfg.optimizer.lr, cfg.optimizer.momentum, cfg.optimizer.weight_decay) == (
        0.1,
        0.9,
        5e-4,
    )
    assert cfg.optimizer.milestones == (100, 150)
    assert cfg.train.epochs == 200 and cfg.train.batch_size == 128
    assert cfg.method.name == "dgad" and cfg.method.beta == 1.0
    assert cfg.model.init == "torch"


def test_yaml_overrides_only_what_it_names(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("attack:\n  eps: 4/255\ntrain:\n  epochs: 3\n")
    cfg = load_config(path)
    assert cfg.attack.eps == pytest.approx(4 / 255)
    assert cfg.train.epochs == 3
    assert cfg.attack.steps == Config().attack.steps


def test_set_overrides_apply_after_the_file(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("train:\n  epochs: 3\n")
    cfg = load_config(
        path,
        [
            "train.epochs=5",
            "optimizer.milestones=[2, 4]",
            "method.use_els=false",
            "eval.attacks=clean,fgsm",
        ],
    )
    assert cfg.train.epochs == 5
    assert cfg.optimizer.milestones == (2, 4)
    assert cfg.method.use_els is False
    assert cfg.eval.attacks == ("clean", "fgsm")


def test_parse_override_nests_keys():
    assert parse_override("a.b=3") == {"a": {"b": 3}}
    with pytest.raises(ConfigError, match="section.key=value"):
        parse_override("novalue")


def test_an_override_value_is_everything_after_the_first_equals_sign():
    assert parse_override("data.path=a=b.npz") == {"data": {"path": "a=b.npz"}}
    assert parse_override("a.b.c= [1, 2]") == {"a": {"b": {"c": [1, 2]}}}
    assert parse_override("a.b=") == {"a": {"b": None}}
    for text in ("novalue", "a..b=1"):
        with pytest.raises(ConfigError) as caught:
            parse_override(text)
        assert str(caught.value) == (
            f"an override must look like section.key=value; received {text!r}"
        )
    with pytest.raises(ConfigError, match=r"^cannot read the value of `a.b`: "):
        parse_override("a.b=[1, 2")


def test_with_values_puts_dotted_values_in_and_empties_the_search():
    base = config_from_dict(
        {
            "train": {"epochs": 7},
            "tune": {"space": {"method.beta": {"type": "float", "min": 0, "max": 4}}},
        }
    )
    trial = with_values(base, {"method.beta": 2.0, "optimizer.lr": 0.5})
    assert (trial.method.beta, trial.optimizer.lr, trial.train.epochs) == (2.0, 0.5, 7)
    assert not trial.tune.space and trial.method.name == base.method.name
    with pytest.raises(ConfigError, match="method.beta"):
        with_values(base, {"method.beta": -1.0})


@pytest.mark.parametrize(
    "override, key",
    [
        ("attack.epsilon=0.1", "attack.epsilon"),
        ("nosuchsection.x=1", "nosuchsection"),
        ("attack.eps=9", "attack.eps"),
        ("attack.eps=-0.1", "attack.eps"),
        ("attack.steps=-1", "attack.steps"),
        ("train.batch_size=0", "train.batch_size"),
        ("train.epochs=two", "train.epochs"),
        ("method.use_map=3", "method.use_map"),
        ("method.name=kd", "method.name"),
        ("data.source=tfds", "data.name"),
        ("train.select=best", "train.select"),
        ("train.select_n=0", "train.select_n"),
        ("train.drop_remainder=2", "train.drop_remainder"),
        ("model.init=xavier", "model.init"),
    ],
)
def test_bad_values_name_the_key(override, key):
    with pytest.raises(ConfigError) as err:
        load_config(None, [override])
    assert key in str(err.value)


def test_validation_selection_without_a_validation_split_is_refused():
    with pytest.raises(ConfigError) as err:
        load_config(None, ["data.val_fraction=0"])  # train.select defaults to best_val
    assert "train.select" in str(err.value) and "data.val_fraction" in str(err.value)


@pytest.mark.parametrize("select", ["last", "best_test"])
def test_all_training_data_is_legal_with_a_selection_that_needs_no_validation(select):
    cfg = load_config(None, ["data.val_fraction=0", f"train.select={select}"])
    assert cfg.data.val_fraction == 0 and cfg.train.select == select


def test_selection_defaults_keep_todays_behaviour():
    t = load_config().train
    assert (t.select, t.select_n, t.drop_remainder) == ("best_val", None, True)


@pytest.mark.parametrize(
    "name",
    [
        "cifar10_resnet18_dgad.yaml",
        "cifar10_mobilenetv2_dgad.yaml",
        "cifar100_resnet18_dgad.yaml",
        "tinyimagenet_preactresnet18_dgad.yaml",
    ],
)
def test_paper_recipes_reproduce_the_reference_run(name):
    cfg = load_config(CONFIGS / name)
    # All training images, last partial batch kept, best-PGD checkpoint chosen on the test set.
    assert cfg.data.val_fraction == 0
    assert cfg.train.drop_remainder is False
    assert cfg.train.select == "best_test" and cfg.train.select_n is None
    # The reference's columns beside AutoAttack.
    assert {"pgd10", "cw_l2", "autoattack"} <= set(cfg.eval.attacks)


def test_malformed_yaml_and_missing_file(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("attack: [unclosed\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(bad)
    with pytest.raises(ConfigError, match="not found"):
        load_config(tmp_path / "missing.yaml")


def test_round_trip_through_yaml(tmp_path):
    cfg = load_config(
        None,
        [
            "attack.eps=8/255",
            "model.normalize_mean=[0.5,0.5,0.5]",
            "model.normalize_std=[0.25,0.25,0.25]",
        ],
    )
    path = tmp_path / "resolved.yaml"
    path.write_text(cfg.to_yaml())
    again = load_config(path)
    assert again == cfg
    assert again.hash() == cfg.hash()


@pytest.mark.parametrize("path", sorted(CONFIGS.glob("*.yaml")), ids=lambda p: p.name)
def test_shipped_configs_load(path):
    if "study" in yaml.safe_load(path.read_text()):
        from dgad_tf.study import load_study

        with pytest.raises(ConfigError, match="python -m dgad_tf.compare"):
            load_config(path)
        assert load_study(path).cells()
    else:
        load_config(path)


def test_tiny_imagenet_recipe_crops_with_the_reference_padding():
    # RandomCrop(64, padding=4); the default H/8 would pad 8 pixels at 64x64.
    cfg = load_config(CONFIGS / "tinyimagenet_preactresnet18_dgad.yaml")
    assert cfg.data.source == "tinyimagenet" and cfg.data.crop_padding == 4
    assert cfg.model.student == "preact-resnet-18" and cfg.model.init == "torch"


def test_cli_bad_config_exits_2_and_writes_nothing(tmp_path, capsys):
    from dgad_tf.fit import main

    out = tmp_path / "run"
    code = main(["--set", f"output.dir={out}", "--set", "attack.stepz=3"])
    assert code == 2
    assert "attack.stepz" in capsys.readouterr().err
    assert not out.exists()


def test_cli_print_config(capsys):
    from dgad_tf.fit import main

    assert main(["--set", "attack.steps=3", "--print-config"]) == 0
    printed = yaml.safe_load(capsys.readouterr().out)
    assert printed["attack"]["steps"] == 3


def test_the_configuration_page_documents_every_config_key():
    import dataclasses
    import typing

    readme = (CONFIGS.parent / "docs" / "configuration.md").read_text()
    sections = {
        name: hint
        for name, hint in typing.get_type_hints(Config).items()
        if dataclasses.is_dataclass(hint)
    }
    assert len(sections) >= 10
    keys = [
        f"{name}.{field.name}"
        for name, hint in sections.items()
        for field in dataclasses.fields(hint)
        if (name, field.name) != ("method", "loss")  # the section's options, below
    ]
    missing = [key for key in keys if f"`{key}`" not in readme]
    assert not missing, f"docs/configuration.md lacks {missing}"


def test_the_configuration_page_lists_each_methods_options_with_its_class_default():
    import dataclasses

    from dgad_tf import losses

    page = (CONFIGS.parent / "docs" / "configuration.md").read_text()
    rows = {line.split("`")[1]: line for line in page.splitlines() if line.startswith("| `")}

    def shown(value):
        if isinstance(value, bool):
            return str(value).lower()
        if value is None:
            return "–"
        return f"`{value}`" if isinstance(value, str) else repr(value)

    for name, cls in losses.METHOD_LOSSES.items():
        assert name in rows, f"docs/configuration.md has no row for method {name}"
        for field in dataclasses.fields(cls):
            entry = f"`{field.name}` {shown(field.default)}"
            assert entry in rows[name], f"the row of {name} lacks {entry!r}"


def test_package_exposes_its_public_names():
    import dgad_tf

    assert dgad_tf.load_config is load_config
    assert (
        callable(dgad_tf.dgad_loss)
        and dgad_tf.AdversarialDistiller.__name__ == "AdversarialDistiller"
    )
    with pytest.raises(AttributeError):
        dgad_tf.no_such_name


@pytest.mark.parametrize(
    "values, message",
    [
        ({"data": 3}, "`data` must be a mapping; received data=3"),
        ({"method": 3}, "`method` must be a mapping; received method=3"),
        ({"method": {"name": 3}}, "`method.name` must be a string; received method.name=3"),
        (
            {"method": {"reference_forwards": 3}},
            "`method.reference_forwards` must be true or false; received "
            "method.reference_forwards=3",
        ),
        ({"data": {"source": 3}}, "`data.source` must be a string; received data.source=3"),
        ({"eval": {"attacks": 3}}, "`eval.attacks` must be a list; received eval.attacks=3"),
        (
            {"eval": {"attacks": ["clean", 3]}},
            "`eval.attacks[1]` must be a string; received eval.attacks[1]=3",
        ),
        ({"train": {"epochs": "x"}}, "`train.epochs` must be a int; received train.epochs='x'"),
        ({"train": {"epochs": True}}, "`train.epochs` must be a int; received train.epochs=True"),
        ({"train": {"epochs": 2.5}}, "`train.epochs` must be a int; received train.epochs=2.5"),
        (
            {"data": {"train_limit": "x"}},
            "`data.train_limit` must be a int; received data.train_limit='x'",
        ),
        ({"attack": {"eps": "1/0"}}, "`attack.eps` must be a float; received attack.eps='1/0'"),
        ({"attack": {"eps": True}}, "`attack.eps` must be a float; received attack.eps=True"),
        (
            {"train": {"jit_compile": 3}},
            "`train.jit_compile` must be true or false; received train.jit_compile=3",
        ),
        ({"nosuch": 1}, "unknown key `nosuch` in the top level; known keys: attack, data, "),
        (
            {"data": {"nosuch": 1}},
            "unknown key `data.nosuch` in section `data`; known keys: augment, crop_padding, ",
        ),
        ([1], "a config must be a mapping of sections; received [1]"),
        # Optional fields take their own type or null, nothing else.
        ({"data": {"train_limit": {"a": 1}}}, "`data.train_limit` must be a int; received "),
        ({"data": {"name": 3}}, "`data.name` must be a string; received data.name=3"),
        ({"data": {"name": True}}, "`data.name` must be a string; received data.name=True"),
        (
            {"tune": {"space": {"method.beta": {"type": "float", "min": -1, "max": 1}}}},
            "tune.space.method.beta: ",
        ),
    ],
)
def test_a_value_of_the_wrong_type_is_refused_naming_key_and_value(values, message):
    with pytest.raises(ConfigError) as caught:
        config_from_dict(values)
    assert str(caught.value).startswith(message), str(caught.value)


def test_values_are_read_into_their_field_types():
    cfg = config_from_dict(
        {
            "train": {"epochs": 3.0, "jit_compile": True},
            "attack": {"eps": "8/255", "steps": 2},
            "data": {"train_limit": None},
            "model": {"normalize_mean": "0.5, 0.25, 1", "normalize_std": [1, 1, 1]},
            "tune": {"objective": {"clean_weight": 1, "robust_weight": 1}},
        }
    )
    assert cfg.train.epochs == 3 and isinstance(cfg.train.epochs, int)
    assert cfg.train.jit_compile is True and cfg.attack.eps == 8 / 255
    assert cfg.data.train_limit is None and cfg.model.normalize_mean == (0.5, 0.25, 1.0)
    assert cfg.tune.objective == {"clean_weight": 1, "robust_weight": 1}
    assert config_from_dict({"train": {"jit_compile": "auto"}}).train.jit_compile == "auto"
    # An empty section (`data:` with nothing under it) and no values at all are the defaults.
    assert config_from_dict({"data": None}) == config_from_dict(None) == Config()
    with pytest.raises(ValueError) as caught:
        parse_fraction("8//255")
    assert str(caught.value) == "not a number or a fraction a/b: '8//255'"


def test_a_config_file_must_hold_a_mapping(tmp_path):
    path = tmp_path / "list.yaml"
    path.write_text("- 1\n- 2\n")
    with pytest.raises(ConfigError) as caught:
        load_config(path)
    assert str(caught.value) == f"{path} must hold a mapping of sections; received [1, 2]"


# --------------------------------------------------------------------------- the method section


@pytest.mark.parametrize(
    "section, expected",
    [
        ({"name": "trades", "beta": 3.0}, "TRADES(beta=3.0)"),
        ({"name": "ard", "alpha": 0.5, "temperature": 4}, "ARD(alpha=0.5, temperature=4.0, "),
        ({"name": "iad"}, "IAD(alpha=1.0, beta=0.1, temperature=1.0, warmup_epochs=60)"),
        ({"name": "adaiad"}, "AdaIAD(alpha=1.0, beta=0.1, temperature=30.0, warmup_epochs=60)"),
    ],
)
def test_a_method_section_builds_that_methods_loss_object(section, expected):
    loss = config_from_dict({"method": section}).method.loss
    assert repr(loss).startswith(expected)


def test_each_methods_option_has_one_default_its_loss_classes():
    from dgad_tf import losses

    for name, cls in losses.METHOD_LOSSES.items():
        method = load_config(None, [f"method.name={name}"]).method
        assert method.loss == cls(), name
        assert method.to_dict() == {"name": name, "reference_forwards": False, **cls().get_config()}


@pytest.mark.parametrize(
    "values, overrides",
    [
        ({"method": {"name": "trades", "alpha": 0.5}}, []),
        ({}, ["method.name=trades", "method.alpha=0.5"]),
    ],
    ids=["yaml", "set"],
)
def test_an_option_of_another_method_is_an_error_listing_the_valid_keys(values, overrides):
    from dgad_tf.config import config_with_overrides

    with pytest.raises(ConfigError) as err:
        config_with_overrides(values, overrides)
    assert str(err.value) == (
        "unknown key `method.alpha` for method trades; known keys: name, reference_forwards, beta"
    )


@pytest.mark.parametrize(
    "old, value, new",
    [
        ("method.trades_beta", 6.0, "`method.beta` (with method.name: trades)"),
        ("method.ard_alpha", 0.5, "`method.alpha` (with method.name: ard)"),
        ("method.ard_temperature", 30.0, "`method.temperature` (with method.name: ard)"),
        ("method.adaad_alpha", 1.0, "`method.alpha` (with method.name: adaad)"),
        ("method.dgad_weighting", "standard", "`method.weighting` (with method.name: dgad)"),
        ("method.rslad_log_epsilon", 1e-5, "`method.log_epsilon` (with method.name: rslad)"),
        ("method.iad_alpha", 1.0, "`method.alpha` (with method.name: iad or adaiad)"),
        ("method.iad_beta", 0.1, "`method.beta` (with method.name: iad or adaiad)"),
        ("method.iad_temperature", 1.0, "`method.temperature` (with method.name: iad or adaiad)"),
        (
            "method.iad_warmup_epochs",
            60,
            "`method.warmup_epochs` (with method.name: iad or adaiad)",
        ),
        ("attack.init", "uniform", "`attack.start`"),
        ("attack.init_std", 0.01, "`attack.start_std`"),
    ],
)
@pytest.mark.parametrize("how", ["yaml", "set"])
def test_a_key_of_the_earlier_flat_sections_is_an_error_naming_its_new_spelling(
    old, value, new, how
):
    from dgad_tf.config import config_with_overrides

    section, key = old.split(".")
    values = {section: {key: value}} if how == "yaml" else {}
    overrides = [f"{old}={value}"] if how == "set" else []
    with pytest.raises(ConfigError) as err:
        config_with_overrides(values, overrides)
    assert str(err.value) == f"`{old}` is now spelled {new}; rename it"


def test_a_method_option_out_of_range_names_its_key():
    with pytest.raises(ConfigError) as err:
        load_config(None, ["method.name=trades", "method.beta=-1"])
    assert str(err.value) == "method trades: `method.beta` must be >= 0; received beta=-1.0"


def test_a_search_over_another_methods_option_is_refused_naming_the_valid_keys():
    with pytest.raises(ConfigError) as err:
        config_from_dict(
            {
                "method": {"name": "adaad"},
                "tune": {"space": {"method.beta": {"type": "float", "min": 0, "max": 4}}},
            }
        )
    assert str(err.value) == (
        "tune.space.method.beta: `method.beta` is not a config field; section `method` has "
        "name, reference_forwards, alpha, kl_reduction, kl_scale (method.name=adaad)"
    )
    with pytest.raises(ConfigError, match="`method.warmup_epochs` is an integer field"):
        config_from_dict(
            {
                "method": {"name": "iad"},
                "tune": {"space": {"method.warmup_epochs": {"type": "float", "min": 0, "max": 4}}},
            }
        )


def test_a_trial_of_another_method_takes_its_own_searched_options_and_the_shared_ones():
    from dgad_tf import losses

    base = config_from_dict({"method": {"name": "trades", "beta": 3.0}})
    trial = with_values(
        base,
        {
            "method.name": "ard",
            "method.alpha": 0.7,
            "method.beta": 2.0,  # TRADES' option, searched for the TRADES trials only
            "method.reference_forwards": True,
            "optimizer.lr": 0.5,
        },
    )
    assert trial.method.loss == losses.ARD(alpha=0.7)
    assert trial.method.reference_forwards is True and trial.optimizer.lr == 0.5
    # A trial of the configured method keeps its configured options.
    same = with_values(base, {"method.name": "trades", "optimizer.lr": 0.5})
    assert same.method.loss == losses.TRADES(beta=3.0) and same.optimizer.lr == 0.5
    with pytest.raises(ConfigError) as caught:
        with_values(base, {"method.name": "kd"})
    assert str(caught.value).startswith("`method.name`: unknown method 'kd'; known methods: dgad")


def test_a_trial_or_cell_of_another_method_keeps_none_of_the_base_methods_options(tmp_path):
    from dgad_tf import study as study_lib

    base = config_from_dict({"method": {"name": "trades", "beta": 3.0, "reference_forwards": True}})
    trial = with_values(base, {"method.name": "ard"})
    assert trial.method.loss == load_config(None, ["method.name=ard"]).method.loss
    assert trial.method.reference_forwards  # the distiller's switch, not an option, is kept
    path = tmp_path / "study.yaml"
    path.write_text(
        yaml.safe_dump(
            {
                "method": {"name": "trades", "beta": 3.0},
                "output": {"dir": str(tmp_path / "study")},
                "study": {"methods": ["trades", "pgd_at", "ard"], "seeds": [0]},
            }
        )
    )
    cells = {cell.entry.name: cell.cfg.method for cell in study_lib.load_study(path).cells()}
    assert cells["trades"].beta == 3.0
    assert cells["ard"].loss == load_config(None, ["method.name=ard"]).method.loss


# The `method:` and `attack:` sections of a config.yaml written before the method sections (as
# the earlier Config.to_yaml wrote every field): an IAD run at the earlier config's temperature.
WRITTEN_BEFORE = """\
attack:
  eps: 0.1
  step_size: 0.025
  steps: 5
  init: auto
  init_std: 0.001
method:
  name: iad
  beta: 1.0
  use_map: true
  use_els: true
  distill_weight: 1.0
  trades_beta: 6.0
  ard_alpha: 0.5
  ard_temperature: 30.0
  adaad_alpha: 1.0
  dgad_weighting: standard
  kl_reduction: batchmean
  kl_scale: 1.0
  rslad_log_epsilon: 0.0
  reference_forwards: true
  iad_alpha: 0.9
  iad_beta: 0.1
  iad_temperature: 30.0
  iad_warmup_epochs: 60
"""


def test_a_run_folders_config_written_before_the_method_sections_still_reads(tmp_path):
    from dgad_tf import losses, rundir

    (tmp_path / "config.yaml").write_text(WRITTEN_BEFORE)
    cfg = rundir.run_config(tmp_path)
    # Only the named method's options counted then (ARD's alpha was ignored by an IAD run).
    assert cfg.method.loss == losses.IAD(alpha=0.9, beta=0.1, temperature=30.0, warmup_epochs=60)
    assert cfg.method.reference_forwards
    assert (cfg.attack.start, cfg.attack.start_std, cfg.attack.steps) == ("auto", 0.001, 5)
    today = load_config(
        None,
        [
            "attack.eps=0.1",
            "attack.step_size=0.025",
            "attack.steps=5",
            "method.name=iad",
            "method.alpha=0.9",
            "method.temperature=30",
            "method.reference_forwards=true",
        ],
    )
    assert cfg.hash() == today.hash()  # so the run resumes under today's spelling
    # A whole earlier section naming no method is refused as today's would be, naming the key.
    (tmp_path / "config.yaml").write_text(WRITTEN_BEFORE.replace("name: iad", "name: kd"))
    with pytest.raises(ConfigError, match=r"^`method.name`: unknown method 'kd'; known methods"):
        rundir.run_config(tmp_path)
    # A hand-written file with some earlier keys is still told their new spelling.
    (tmp_path / "config.yaml").write_text("method:\n  name: iad\n  iad_temperature: 30.0\n")
    with pytest.raises(ConfigError, match="is now spelled `method.temperature`"):
        rundir.run_config(tmp_path)


def test_an_override_of_an_earlier_key_is_respelled_whatever_its_value_holds():
    # A study.yaml written before the method sections stores its `set:` overrides in the old
    # keys; they are read in today's spelling. The key ends at the first `=`, as in --set.
    from dgad_tf.config.loading import renamed_override

    assert renamed_override("method.trades_beta=6") == "method.beta=6"
    assert renamed_override(" attack.init =uniform") == "attack.start=uniform"
    assert renamed_override("attack.init=uniform #a=b") == "attack.start=uniform #a=b"
    assert renamed_override("method.dgad_weighting={a: b=c}") == "method.weighting={a: b=c}"
    for text in ("data.path=a=b.npz", "method.trades_beta", "method.beta=6"):
        assert renamed_override(text) == text


def test_a_method_option_is_read_into_its_type_or_reaches_the_class_as_written():
    # A float option is read like a config field (a fraction, a wrong type named) ...
    with pytest.raises(ConfigError) as caught:
        load_config(None, ["method.name=trades", "method.beta=high"])
    assert str(caught.value) == "`method.beta` must be a float; received method.beta='high'"
    # ... and an option of a type a config does not read (a user's `typing.Literal`) reaches the
    # loss class as written, which checks it (tests/user_losses.py is on the test path).
    name = "user_losses.SummedAT"
    method = config_from_dict({"method": {"name": name, "reduction": "sum", "smoothing": "1/5"}})
    assert (method.method.loss.reduction, method.method.loss.smoothing) == ("sum", 0.2)
    with pytest.raises(ConfigError) as caught:
        config_from_dict({"method": {"name": name, "reduction": "max"}})
    assert str(caught.value) == (
        f"method {name}: `method.reduction` must be mean or sum; received reduction='max'"
    )
    # A mapping option is taken as a mapping, and anything else refused naming it.
    scales = config_from_dict({"method": {"name": name, "scales": {"total": 0.5}}})
    assert scales.method.loss.scales == {"total": 0.5}
    with pytest.raises(ConfigError) as caught:
        config_from_dict({"method": {"name": name, "scales": 0.5}})
    assert str(caught.value) == "`method.scales` must be a mapping; received method.scales=0.5"


def test_the_teacher_run_has_its_own_config_from_teacher_train_and_model_teacher(tmp_path):
    from dgad_tf import losses

    cfg = load_config(
        None,
        [
            "method.name=adaad",
            "method.reference_forwards=true",
            "model.student=small-cnn",
            "model.teacher=wrn-34-10",
            "model.teacher_path=/elsewhere/teacher.keras",
            "model.sync_batchnorm=true",
            "teacher_train={method: trades, epochs: 3, lr: 0.02, milestones: [2]}",
            "optimizer.lr=0.5",
            "optimizer.momentum=0.8",
            "train.epochs=7",
            "attack.steps=3",
            "export.formats=[saved_model]",
        ],
    )
    teacher = cfg.teacher_config(str(tmp_path / "teacher_run"))
    # What trains: the teacher network with teacher_train's method (its class defaults), epochs,
    # lr and milestones; the run's attack, data and remaining optimiser settings.
    assert teacher.method.name == "trades" and teacher.method.loss == losses.TRADES()
    assert teacher.method.reference_forwards is True
    assert (teacher.train.epochs, teacher.optimizer.lr) == (3, 0.02)
    assert teacher.optimizer.milestones == (2,)
    assert teacher.optimizer.momentum == 0.8 and teacher.attack == cfg.attack
    assert teacher.data == cfg.data and teacher.train.seed == cfg.train.seed
    assert teacher.model.student == "wrn-34-10" and teacher.model.sync_batchnorm is False
    assert teacher.model.teacher_path is None and teacher.teacher_train.epochs == 0
    assert teacher.export.formats == () and teacher.output.dir == str(tmp_path / "teacher_run")
    # It is a config `fit` reads back as it is.
    path = tmp_path / "teacher.yaml"
    path.write_text(teacher.to_yaml())
    assert load_config(path).hash() == teacher.hash()


def test_a_teacher_of_the_runs_own_method_takes_the_runs_options():
    cfg = load_config(None, ["method={name: trades, beta: 3.0}", "teacher_train.method=trades"])
    assert cfg.teacher_config("t").method == cfg.method
    other = load_config(None, ["method={name: trades, beta: 3.0}", "teacher_train.method=pgd_at"])
    assert other.teacher_config("t").method.name == "pgd_at"
