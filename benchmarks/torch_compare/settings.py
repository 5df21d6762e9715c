"""The DGAD step both sides run, and its input: CIFAR-10-shaped images, 10 classes."""

EPS = 8 / 255
STEP_SIZE = 2 / 255
INIT_STD = 0.001
LR, MOMENTUM, WEIGHT_DECAY, BETA = 0.1, 0.9, 5e-4, 1.0
NUM_CLASSES = 10
INPUT_SHAPE = (32, 32, 3)
