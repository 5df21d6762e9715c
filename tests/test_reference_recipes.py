"""Each baseline recipe is its reference run: a table per recipe, transcribed from its code.

Every value below was read from the reference repository itself (file:line at the commit named),
not from our docs. The learning rate in effect per epoch is not a milestone list but the
reference's own schedule code, transcribed as a Python function of the reference's epoch
counter; the recipe must give the same rate in every epoch (ours count from 0, the trained
epoch e of log.csv is index e - 1).

    zibojia/RSLAD                              c40e04f
    yaodongyu/TRADES                           6e8e11b
    goldblum/AdversariallyRobustDistillation   779ade3
    ZFancy/IAD                                 a8091a8
    kunsaram01/DGAD                            a0329c8
    boyellow/AdaAD                             9e5c6e5
"""

import pathlib

import numpy as np
import pytest

from dgad_tf.config import load_config
from dgad_tf.fit import student_learning_rates
from dgad_tf.losses import ADV, CLEAN, MIRROR, Forward

# Compared with an independent reference: CI also runs these with TF_ENABLE_ONEDNN_OPTS=0.
pytestmark = pytest.mark.parity

# The student's training-mode calls of a reference step, in order; an unused one only moves
# batch-norm statistics.
UNUSED_CLEAN, UNUSED_ADV = Forward("clean", used=False), Forward("adv", used=False)

CONFIGS = pathlib.Path(__file__).resolve().parents[1] / "configs"


# --------------------------------------------------------------------------- reference schedules
def rslad_rates():
    # resnet18_rslad_cifar10.py:37 lr=0.1; :47 `for epoch in range(1, epochs+1)`;
    # :81-83 after training epoch 215, 260, 285: param_group['lr'] *= 0.1.
    # (resnet18_rslad_cifar100.py:38, :50, :84-86 are the same.)
    lr, rates = 0.1, []
    for epoch in range(1, 300 + 1):
        rates.append(lr)
        if epoch in [215, 260, 285]:
            lr *= 0.1
    return rates


def trades_rates():
    # train_trades_cifar10.py:155 `for epoch in range(1, args.epochs + 1)`, :157 adjust first;
    # :137-147 lr = args.lr, *0.1 if epoch >= 75, *0.01 if >= 90, *0.001 if >= 100.
    rates = []
    for epoch in range(1, 76 + 1):
        lr = 0.1
        if epoch >= 75:
            lr = 0.1 * 0.1
        if epoch >= 90:
            lr = 0.1 * 0.01
        if epoch >= 100:
            lr = 0.1 * 0.001
        rates.append(lr)
    return rates


def initial_lr_each_epoch_rates():
    # ARD main.py:167 lr = args.lr (0.1, :15); :169 `for epoch in range(args.epochs)` (200, :18);
    # :170 adjust_learning_rate(optimizer, epoch, lr) with that same initial lr every epoch;
    # :32-36 if epoch in lr_schedule ([100, 150], :16): lr *= lr_factor (0.1, :17) and set it.
    # The caller's lr never changes, so epoch 150 sets 0.1 * 0.1 again, not 0.001.
    # IAD-I.py is the same code: :218 lr = args.lr (0.1, :18), :229-230 the loop and the call
    # (200 epochs, :21), :49-53 the function, :19-20 [100, 150] and 0.1.
    group_lr, initial, rates = 0.1, 0.1, []
    for epoch in range(200):
        lr = initial
        if epoch in [100, 150]:
            lr *= 0.1
            group_lr = lr
        rates.append(group_lr)
    return rates


def dgad_repo_rates(total_epoch=200):
    # kunsaram01/DGAD main.py:666 `for epoch in range(start_epoch, args.epochs)` from 0 (:278);
    # :300 lr_decay(epoch, args.epochs); :120-135 piecewise: [100, 150] for 200 epochs, [100, 105]
    # for 110.
    rates = []
    for epoch in range(total_epoch):
        epoch_point = [100, 150] if total_epoch == 200 else [100, 105]
        if epoch < epoch_point[0]:
            rates.append(0.1)
        elif epoch < epoch_point[1]:
            rates.append(0.1 / 10)
        else:
            rates.append(0.1 / 100)
    return rates


# --------------------------------------------------------------------------- the tables
# kunsaram01/DGAD main.py's defaults, which its three CIFAR DGAD runs share.
_DGAD_MAIN = dict(
    epochs=200,  # main.py:64
    rates=dgad_repo_rates(),  # main.py:120-135
    momentum=0.9,  # :69
    weight_decay=5e-4,  # :70
    batch_size=128,  # :65
    eps=8 / 255,  # :55
    step_size=2 / 255,  # :57
    steps=10,  # :56
    start=("gaussian", 0.001),  # AT_helper.py:27
    # beta (ALP_beta), MAP, ELS, weighting, distill weight
    dgad=(1.0, True, True, "standard", 1.0),  # :42, :409-445
    forwards=(CLEAN, ADV),  # :397-398
    train_mode_attack=False,  # AT_helper.py:20-21
    keep_partial_batch=True,  # :166-171
    val_fraction=0,  # config/dataset_config.py:22-23
    select="best_test",  # :588-590, :628-640
)

REFERENCE = {
    "cifar10_resnet18_rslad.yaml": dict(
        source="zibojia/RSLAD resnet18_rslad_cifar10.py, rslad_loss.py",
        epochs=300,  # resnet18_rslad_cifar10.py:14
        rates=rslad_rates(),
        momentum=0.9,  # :37
        weight_decay=2e-4,  # :37
        batch_size=128,  # :15
        eps=8 / 255,  # :16
        step_size=2 / 255,  # :56
        steps=10,  # :56
        start=("gaussian", 0.001),  # rslad_loss.py:40
        kl=("class_mean", 1.0),  # :61-62 torch.mean
        log_epsilon=1e-5,  # :39
        forwards=(ADV, CLEAN),  # rslad_loss.py:58 then :58 of the script
        train_mode_attack=False,  # rslad_loss.py:37 model.eval()
        keep_partial_batch=True,  # :28 DataLoader without drop_last
        val_fraction=0,  # :27 the whole training set
        select="rslad_pgd20",  # :68-80
    ),
    "cifar100_resnet18_rslad.yaml": dict(
        source="zibojia/RSLAD resnet18_rslad_cifar100.py, rslad_loss.py",
        epochs=300,  # resnet18_rslad_cifar100.py:15
        rates=rslad_rates(),
        momentum=0.9,  # :38
        weight_decay=2e-4,  # :38
        batch_size=128,  # :16
        eps=8 / 255,  # :17
        step_size=2 / 255,  # :58
        steps=10,  # :58
        start=("gaussian", 0.001),  # rslad_loss.py:40
        kl=("class_mean", 10.0),  # :64-65 10*torch.mean
        log_epsilon=1e-5,  # :40
        forwards=(ADV, CLEAN),  # rslad_loss.py:58, then :60
        train_mode_attack=False,  # rslad_loss.py:37
        keep_partial_batch=True,  # :29
        val_fraction=0,  # :28
        select="rslad_pgd20",  # :71-83
    ),
    "cifar10_resnet18_trades.yaml": dict(
        source="yaodongyu/TRADES train_trades_cifar10.py, trades.py",
        epochs=76,  # train_trades_cifar10.py:20
        rates=trades_rates(),
        momentum=0.9,  # :26
        weight_decay=2e-4,  # :22
        batch_size=128,  # :16
        eps=0.031,  # :30
        step_size=0.007,  # :34
        steps=10,  # :32
        start=("gaussian", 0.001),  # trades.py:31
        trades_beta=6.0,  # :36
        # trades.py:79 model(x_natural), :81-82 model(x_adv) and model(x_natural) again
        forwards=(CLEAN, ADV, UNUSED_CLEAN),
        train_mode_attack=False,  # trades.py:28 model.eval()
        keep_partial_batch=True,  # :68
        val_fraction=0,  # :67
        select="last",  # :168-173 a checkpoint every epoch, none chosen
    ),
    "cifar10_resnet18_ard.yaml": dict(
        source="goldblum/AdversariallyRobustDistillation main.py",
        epochs=200,  # main.py:18
        rates=initial_lr_each_epoch_rates(),
        momentum=0.9,  # :168
        weight_decay=2e-4,  # :168
        batch_size=128,  # :49
        eps=8 / 255,  # :101
        step_size=2 / 255,  # :103
        steps=10,  # :102
        start=("uniform", None),  # :70
        kl=("class_mean", 1.0),  # :113 nn.KLDivLoss() default reduction
        ard=(1.0, 30.0),  # :26 alpha, :23 temp
        forwards=(ADV, CLEAN),  # :124 net(inputs, targets), :126 basic_net(inputs)
        train_mode_attack=True,  # :118 net.train() before the attack
        keep_partial_batch=True,  # :49
        val_fraction=0,  # :48
        select="last",  # :25 save_period 1, :132-139 a checkpoint every epoch, none chosen
    ),
    "cifar10_resnet18_iad.yaml": dict(
        source="ZFancy/IAD IAD-I.py",
        epochs=200,  # IAD-I.py:21
        rates=initial_lr_each_epoch_rates(),
        momentum=0.9,  # :224
        weight_decay=2e-4,  # :224
        batch_size=128,  # :76
        eps=8 / 255,  # :136
        step_size=2 / 255,  # :138
        steps=10,  # :137
        start=("uniform", None),  # :97
        iad=(1.0, 0.1, 1.0, 60),  # :29 alpha, :34 beta, :26 temp, :35 begin
        forwards=(ADV, UNUSED_ADV, CLEAN),  # :106, :169, :181
        after_warmup=(ADV, UNUSED_ADV, CLEAN, UNUSED_CLEAN),  # :179 basic_net(inputs) twice
        train_mode_attack=True,  # :159 net.train()
        keep_partial_batch=True,  # :76
        val_fraction=0,  # :75
        select="best_test",  # :236-259 PGD-10 on the test split every epoch, best kept
    ),
    "cifar10_resnet18_adaiad.yaml": dict(
        source="kunsaram01/DGAD main.py --method AdaAD_with_IAD1, AT_helper.py",
        epochs=200,  # main.py:64
        rates=dgad_repo_rates(),
        momentum=0.9,  # :69
        weight_decay=5e-4,  # :70
        batch_size=128,  # :65
        eps=8 / 255,  # :55
        step_size=2 / 255,  # :57
        steps=10,  # :56
        start=("gaussian", 0.001),  # AT_helper.py:27
        iad=(1.0, 0.1, 30.0, 60),  # :51 IAD_alpha, :52 IAD_beta, :38 temp, :50 IAD_begin
        forwards=(CLEAN, ADV, UNUSED_CLEAN),  # :367, :368, :388
        after_warmup=(CLEAN, ADV, UNUSED_CLEAN, UNUSED_CLEAN),  # :385 net(inputs) twice
        train_mode_attack=False,  # AT_helper.py:20-21 model.eval()
        keep_partial_batch=True,  # :166-171
        val_fraction=0,  # config/dataset_config.py:22-23
        select="best_test",  # :588-590, :628-640 best PGD-10 on the test split
    ),
    # boyellow/AdaAD: kunsaram01/DGAD's Plain_Madry raises TypeError (its AT_helper.py:121).
    "cifar10_resnet18_pgdat.yaml": dict(
        source="boyellow/AdaAD main.py --method Plain_Madry --epochs 110 --epsilon 8 "
        "--step_size 2, AT_helper.py",
        epochs=110,  # --epochs 110, main.py:117-118
        rates=dgad_repo_rates(110),  # boyellow/AdaAD main.py:113-128, :293, :517: the same
        momentum=0.9,  # main.py:63
        weight_decay=5e-4,  # :64
        batch_size=128,  # :59
        eps=8 / 255,  # --epsilon 8, :308-309
        step_size=2 / 255,  # --step_size 2, :308
        steps=10,  # :50
        start=("gaussian", 0.001),  # AT_helper.py:66
        forwards=(ADV, UNUSED_CLEAN),  # :314 net(adv_inputs), :317 net(inputs), its loss unused
        train_mode_attack=False,  # AT_helper.py:63-64 model.eval()
        keep_partial_batch=True,  # :159-164
        val_fraction=0,  # config/dataset_config.py:22-23
        select="best_test",  # :423-424, :479-493
    ),
    "cifar10_resnet18_dgad.yaml": dict(
        _DGAD_MAIN, source="kunsaram01/DGAD main.py --method DGAD, AT_helper.py"
    ),
    "cifar10_mobilenetv2_dgad.yaml": dict(
        _DGAD_MAIN,
        source="kunsaram01/DGAD main.py --method DGAD --model mobilenetV2",
        dgad=(1.0, True, True, "reference_mobilenetv2", 1.0),  # main.py:439-441
    ),
    "cifar100_resnet18_dgad.yaml": dict(
        _DGAD_MAIN,
        source="kunsaram01/DGAD main.py --method DGAD --dataset CIFAR100",
        val_fraction=0,  # config/dataset_config.py:42-43 the CIFAR100 train split
    ),
    "tinyimagenet_preactresnet18_dgad.yaml": dict(
        source="kunsaram01/DGAD main_tiny.py --method DGAD --model presnet18",
        epochs=200,  # main_tiny.py:71
        rates=dgad_repo_rates(),  # main_tiny.py:135-150
        momentum=0.9,  # main_tiny.py:77
        weight_decay=5e-4,  # main_tiny.py:78
        batch_size=128,  # main_tiny.py:72
        eps=8 / 255,  # main_tiny.py:61
        step_size=2 / 255,  # main_tiny.py:63
        steps=10,  # main_tiny.py:62
        start=("gaussian", 0.001),  # AT_helper.py:27
        # beta (ALP_beta), MAP, ELS, weighting, distill weight
        dgad=(1.0, True, True, "standard", 1.0),  # main_tiny.py:48, main_tiny.py:372-421
        forwards=(CLEAN, ADV),  # main_tiny.py:379-380
        train_mode_attack=False,  # AT_helper.py:20-21
        keep_partial_batch=True,  # main_tiny.py:183-188
        val_fraction=0,  # config/dataset_config.py:65-69
        select="best_test",  # main_tiny.py:463, :520-532
    ),
    "cifar10_resnet18_adaad.yaml": dict(
        source="kunsaram01/DGAD main.py --method AdaAD, AT_helper.py",
        epochs=200,  # main.py:64
        rates=dgad_repo_rates(),
        momentum=0.9,  # :69
        weight_decay=5e-4,  # :70
        batch_size=128,  # :65
        eps=8 / 255,  # :55
        step_size=2 / 255,  # :57
        steps=10,  # :56
        start=("gaussian", 0.001),  # AT_helper.py:27
        kl=("class_mean", 1.0),  # :348-352 nn.KLDivLoss()
        adaad_alpha=1.0,  # :41
        forwards=(CLEAN, ADV),  # :340-341
        train_mode_attack=False,  # AT_helper.py:20-21
        keep_partial_batch=True,  # :166-171
        val_fraction=0,  # config/dataset_config.py:22-23
        select="best_test",  # :588-590, :628-640
    ),
    "cifar100_resnet18_adaad.yaml": dict(
        source="kunsaram01/DGAD main.py --method AdaAD --dataset CIFAR100, AT_helper.py",
        epochs=200,  # main.py:64
        rates=dgad_repo_rates(),
        momentum=0.9,  # :69
        weight_decay=5e-4,  # :70
        batch_size=128,  # :65
        eps=8 / 255,  # :55
        step_size=2 / 255,  # :57
        steps=10,  # :56
        start=("gaussian", 0.001),  # AT_helper.py:27
        kl=("batchmean", 1.0),  # :354-358 (1/len) * torch.sum(KLDivLoss(reduce=False))
        adaad_alpha=1.0,  # :41
        forwards=(CLEAN, ADV),  # :340-341
        train_mode_attack=False,  # AT_helper.py:20-21
        keep_partial_batch=True,  # :166-171
        val_fraction=0,  # config/dataset_config.py:42-43 the CIFAR100 train split
        select="best_test",  # :588-590, :628-640
    ),
}

# AdaIAD as above, plus IGDM's term from HongsinLee/saad igdm.py ("S") and args.py ("A"): the
# same recipe with the mirrored forward x - delta and IGDM's weight and ramp.
REFERENCE["cifar10_resnet18_adaiad_igdm.yaml"] = dict(
    REFERENCE["cifar10_resnet18_adaiad.yaml"],
    source="kunsaram01/DGAD main.py --method AdaAD_with_IAD1 + HongsinLee/saad igdm.py",
    # :367, :368, :388, then S:56 student(X - delta) in training mode
    forwards=(CLEAN, ADV, UNUSED_CLEAN, MIRROR),
    after_warmup=(CLEAN, ADV, UNUSED_CLEAN, MIRROR, UNUSED_CLEAN),  # :385 net(inputs) twice
    igdm=(1.0, 200),  # A:7 --igdm_alpha 1; S:59 epoch/200, A:20 --epochs 200
)


def recipe(name):
    return load_config(CONFIGS / name)


@pytest.mark.parametrize("name", sorted(REFERENCE))
def test_schedule_is_the_references_rate_in_every_epoch(name):
    ref, cfg = REFERENCE[name], recipe(name)
    assert cfg.train.epochs == ref["epochs"] == len(ref["rates"])
    np.testing.assert_allclose(student_learning_rates(cfg), ref["rates"], rtol=1e-6)
    assert cfg.optimizer.momentum == ref["momentum"]
    assert cfg.optimizer.weight_decay == ref["weight_decay"]
    assert cfg.optimizer.warmup_epochs == 0 and not cfg.optimizer.nesterov


@pytest.mark.parametrize("name", sorted(REFERENCE))
def test_attack_data_and_forwards_are_the_references(name):
    ref, cfg = REFERENCE[name], recipe(name)
    a, me = cfg.attack, cfg.method
    np.testing.assert_allclose([a.eps, a.step_size], [ref["eps"], ref["step_size"]], rtol=1e-12)
    assert a.steps == ref["steps"]
    init, std = ref["start"]
    start = me.loss.random_start(me.reference_forwards) if a.start == "auto" else a.start
    assert start == init
    if std is not None:
        assert a.start_std == std
    assert cfg.train.batch_size == ref["batch_size"]
    assert cfg.train.drop_remainder is not ref["keep_partial_batch"]
    assert cfg.data.val_fraction == ref["val_fraction"]
    spec = me.loss
    assert me.reference_forwards
    assert spec.reference_forwards == ref["forwards"]
    assert spec.reference_train_mode_attack is ref["train_mode_attack"]
    assert spec.reference_forwards_after_warmup == ref.get("after_warmup")


@pytest.mark.parametrize("name", sorted(REFERENCE))
def test_loss_options_are_the_references(name):
    ref, cfg = REFERENCE[name], recipe(name)
    me = cfg.method
    if "kl" in ref:
        assert (me.kl_reduction, me.kl_scale) == ref["kl"]
    if "log_epsilon" in ref:
        assert me.log_epsilon == ref["log_epsilon"]
    if "trades_beta" in ref:
        assert me.beta == ref["trades_beta"]
    if "ard" in ref:
        assert (me.alpha, me.temperature) == ref["ard"]
    if "adaad_alpha" in ref:
        assert me.alpha == ref["adaad_alpha"]
    if "dgad" in ref:
        assert (me.beta, me.use_map, me.use_els, me.weighting, me.distill_weight) == ref["dgad"]
    if "iad" in ref:
        assert (me.alpha, me.beta, me.temperature, me.warmup_epochs) == ref["iad"]
    if "igdm" in ref:  # E is the run's epochs unless the block gives it
        assert (me.igdm["alpha"], me.igdm["total_epochs"] or cfg.train.epochs) == ref["igdm"]


@pytest.mark.parametrize("name", sorted(REFERENCE))
def test_selection_is_the_references(name):
    assert recipe(name).train.select == REFERENCE[name]["select"]


@pytest.mark.parametrize("name", sorted(REFERENCE))
def test_every_key_the_recipe_sets_names_where_it_comes_from(name):
    lines = (CONFIGS / name).read_text().splitlines()
    for i, line in enumerate(lines):
        if not line.strip() or line.lstrip().startswith("#") or line.rstrip().endswith(":"):
            continue  # comments and section headers
        comment = line.split("#", 1)[1] if "#" in line else ""
        above = lines[i - 1].lstrip() if i else ""
        cited = comment or (above.startswith("#") and above)
        assert cited, f"{name}:{i + 1} sets {line.strip()!r} without naming its source"


def test_rslad_selection_evaluates_at_the_references_epochs():
    from dgad_tf.callbacks import PeriodicTestPGD

    rule = PeriodicTestPGD.rslad(None, eps=8 / 255)
    # resnet18_rslad_cifar10.py:47 epochs from 1; :68 the condition as written.
    expected = [
        (epoch % 20 == 0 and epoch < 215) or (epoch % 1 == 0 and epoch >= 215)
        for epoch in range(1, 300 + 1)
    ]
    assert [rule.evaluated_epochs(epoch) for epoch in range(1, 301)] == expected
    # :72 attack_pgd(..., attack_iters=20, step_size=0.003, epsilon=8.0/255.0); rslad_loss.py:10
    # a uniform start.
    assert (rule.steps, rule.step_size, rule.eps) == (20, 0.003, 8 / 255)


def test_print_lr_answers_what_rate_at_an_epoch(capsys):
    from dgad_tf.fit import main

    assert main(["--config", str(CONFIGS / "cifar10_resnet18_ard.yaml"), "--print-lr"]) == 0
    printed = dict(line.split() for line in capsys.readouterr().out.splitlines())
    # log.csv's epoch 160 is the reference's epoch index 159: 0.01 (not 0.001 after 150).
    assert (
        float(printed["160"])
        == pytest.approx(initial_lr_each_epoch_rates()[159])
        == pytest.approx(0.01)
    )
    assert len(printed) == 200


def test_print_config_summarises_the_schedule(capsys):
    from dgad_tf.fit import main

    assert main(["--config", str(CONFIGS / "cifar10_resnet18_trades.yaml"), "--print-config"]) == 0
    out = capsys.readouterr().out
    assert "0.1 in epochs 1-74, 0.01 in epochs 75-76" in out
