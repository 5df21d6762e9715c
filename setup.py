"""Install dgad_tf: `pip install -e .` (`[test]` adds pytest, `[mutation]` pytest and mutmut,
`[torch]` the PyTorch converter, `[plot]` the figures of `python -m dgad_tf.compare`, `[bench]`
the benchmarks against PyTorch)."""

import pathlib
import re

from setuptools import find_packages, setup

HERE = pathlib.Path(__file__).parent
VERSION = re.search(
    r'__version__ = "([^"]+)"', (HERE / "dgad_tf" / "__init__.py").read_text()
).group(1)
# Every command is a `main(argv=None) -> int` over the library; `python -m dgad_tf.<command>` and
# these scripts run the same function (tests/test_cli_promises.py resolves each one).
CONSOLE_SCRIPTS = [
    "dgad-fit = dgad_tf.fit:main",
    "dgad-evaluate = dgad_tf.evaluate:main",
    "dgad-export = dgad_tf.export:main",
    "dgad-tune = dgad_tf.tune:main",
    "dgad-compare = dgad_tf.compare:main",
    "dgad-serving-client = dgad_tf.serving_client:main",
    "dgad-convert-teacher = dgad_tf.teachers.convert:main",
]
REQUIREMENTS = [
    line.strip()
    for line in (HERE / "requirements.txt").read_text().splitlines()
    if line.strip() and not line.startswith("#")
]

setup(
    name="dgad_tf",
    version=VERSION,
    description="Dynamic Guidance Adversarial Distillation (ECCV 2024) in Keras/TensorFlow",
    long_description=(HERE / "README.md").read_text() if (HERE / "README.md").exists() else "",
    long_description_content_type="text/markdown",
    packages=find_packages(include=["dgad_tf", "dgad_tf.*"]),
    python_requires=">=3.10",
    install_requires=REQUIREMENTS,
    entry_points={"console_scripts": CONSOLE_SCRIPTS},
    extras_require={
        # The tests draw the study figures too, so they need what `[plot]` adds.
        "test": ["pytest>=7", "matplotlib>=3.5"],
        # Mutation testing of the pure-Python modules (docs/contributing.md; setup.cfg [mutmut]).
        "mutation": ["pytest>=7", "matplotlib>=3.5", "mutmut>=3.8,<4"],
        # The PNG figures of `python -m dgad_tf.compare`; without it the tables are still written.
        "plot": ["matplotlib>=3.5"],
        "torch": ["torch>=2.0", "safetensors>=0.4"],
        # benchmarks/vs_pytorch.py and benchmarks/autoattack_vs_torchattacks.py compare against
        # PyTorch and torchattacks' AutoAttack. Install torch first (the CPU or CUDA build you
        # want): torchattacks only asks for torch>=1.7.1 and must not pull another build.
        "bench": ["torch>=2.0", "torchattacks>=3.5"],
    },
)
