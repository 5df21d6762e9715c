"""dgad_tf: Dynamic Guidance Adversarial Distillation in Keras/TensorFlow."""

__version__ = "0.1.0"
