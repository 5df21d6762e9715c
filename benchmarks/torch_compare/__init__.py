"""The two sides of `vs_pytorch.py`'s comparison, one concept a module.

* `settings`: the DGAD step both sides run (attack, loss, optimiser) and the CIFAR-10 input;
* `nets`: the PyTorch networks, default init and batch-norm statistics calibrated on noise;
* `dgad`: the DGAD step written idiomatically in PyTorch (`TorchDGADStep`);
* `bridge`: our side from PyTorch's weights (`keras_from_torch`) and our compiled step;
* `parity`: the equality check of the two steps, run before any timing (`check_one_step`);
* `gradients`: the gradient probe behind `--gradient-check` (`gradient_agreement`);
* `timing`: thread counts, the steps and batch that are timed, the alternating rounds, and the
  arguments `vs_pytorch.py` and `kernel_time.py` share.

The benchmark scripts put this folder's parent (benchmarks/) and the repository root first on
`sys.path` and import it as `torch_compare`.
"""
