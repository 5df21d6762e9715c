"""Our side from PyTorch's: the converted networks and our compiled DGAD step."""

from torch import nn

from .settings import (
    BETA,
    EPS,
    INIT_STD,
    INPUT_SHAPE,
    LR,
    MOMENTUM,
    NUM_CLASSES,
    STEP_SIZE,
    WEIGHT_DECAY,
)


def keras_from_torch(net: nn.Module, arch: str, prefix: str):
    """Our model for `arch` with the weights of `net`, converted by `dgad_tf.teachers`."""
    from dgad_tf.models import build_model
    from dgad_tf.teachers.conversion import convert_state_dict

    state = {k: v.detach().cpu().numpy() for k, v in net.state_dict().items()}
    converted, _ = convert_state_dict(state, arch, NUM_CLASSES)
    # Student and teacher live in one Keras model: give each its own layer names.
    model = build_model(arch, NUM_CLASSES, INPUT_SHAPE, name_prefix=prefix)
    model.set_weights(converted.get_weights())
    return model


def make_distiller(student, teacher, steps, attack_init):
    """Our compiled DGAD step with the benchmark's settings, XLA as `train.jit_compile: auto`."""
    from dgad_tf.attacks import PGD
    from dgad_tf.distiller import AdversarialDistiller
    from dgad_tf.losses import DGAD
    from dgad_tf.optim import TorchSGD
    from dgad_tf.precision import resolve_jit_compile

    distiller = AdversarialDistiller(
        teacher=teacher,
        student=student,
        loss=DGAD(beta=BETA),
        attack=PGD(
            eps=EPS, step_size=STEP_SIZE, steps=steps, start=attack_init, start_std=INIT_STD
        ),
    )
    distiller.compile(
        optimizer=TorchSGD(LR, momentum=MOMENTUM, weight_decay=WEIGHT_DECAY),
        jit_compile=resolve_jit_compile("auto"),
    )
    return distiller
