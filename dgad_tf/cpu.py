"""TensorFlow's oneDNN CPU kernels on by default on x86, and a description of the CPU.

TensorFlow 2.21 turns its oneDNN kernels (convolutions, matmuls, batch norm) on by default only
on x86 CPUs with AVX512_VNNI, AVX512_BF16, AVX_VNNI or AMX (`tensorflow/core/util/port.cc`);
elsewhere, e.g. on an AVX2-only AMD EPYC, convolutions run in Eigen and the DGAD step was slower
than PyTorch's (issue 26). TensorFlow reads `TF_ENABLE_ONEDNN_OPTS` once, when it is imported, so
`dgad_tf/__init__.py` calls `use_onednn_by_default()` before anything imports TensorFlow: every
command (`python -m dgad_tf.fit`, ...) and `import dgad_tf` as a program's first import get
oneDNN. A value the user set, `TF_ENABLE_ONEDNN_OPTS=0` included, is left alone; non-x86 CPUs
are left to TensorFlow's own default. When TensorFlow was imported before `dgad_tf` with oneDNN
off and the user had not asked for that, one warning says so and how to turn it on.

Importing this module imports neither TensorFlow nor Keras (`onednn_enabled()` does).

Example:
    >>> from dgad_tf import cpu
    >>> cpu.describe()["onednn"]
    True
"""

from __future__ import annotations

import logging
import os
import platform
import sys

VARIABLE = "TF_ENABLE_ONEDNN_OPTS"
X86_MACHINES = ("x86_64", "amd64", "i386", "i686", "x86")
# The /proc/cpuinfo flags that decide which oneDNN kernels a CPU can run, oldest first.
VECTOR_EXTENSIONS = (
    "avx",
    "avx2",
    "fma",
    "avx_vnni",
    "avx512f",
    "avx512_vnni",
    "avx512_bf16",
    "avx512_fp16",
    "amx_tile",
    "amx_bf16",
    "amx_int8",
)

log = logging.getLogger(__name__)


def is_x86(machine: str | None = None) -> bool:
    """Whether `machine` (default: `platform.machine()`) names an x86 CPU."""
    return (platform.machine() if machine is None else machine).lower() in X86_MACHINES


def use_onednn_by_default(machine: str | None = None) -> None:
    """Set `TF_ENABLE_ONEDNN_OPTS=1` on x86 unless the user set it; warn if too late.

    Has an effect only before TensorFlow is imported. If TensorFlow is already imported, the
    variable is unset and its oneDNN kernels are off, logs one warning naming the variable.

    Args:
        machine: the CPU architecture as `platform.machine()` names it. Defaults to `None`
            (this machine's).
    """
    if not is_x86(machine) or VARIABLE in os.environ:
        return
    os.environ[VARIABLE] = "1"
    if "tensorflow" in sys.modules and onednn_enabled() is False:
        log.warning(
            "TensorFlow was imported before dgad_tf with its oneDNN CPU kernels off, so "
            "convolutions run slower on this CPU; import dgad_tf first, or set %s=1 in the "
            "environment before starting Python.",
            VARIABLE,
        )


def onednn_enabled() -> bool | None:
    """Whether the imported TensorFlow runs its oneDNN kernels; `None` if it cannot tell.

    Imports TensorFlow if it is not imported yet (which fixes the setting for this process).
    """
    try:
        from tensorflow.python.util import _pywrap_util_port
    except ImportError:
        return None
    is_enabled = getattr(_pywrap_util_port, "IsMklEnabled", None)
    return None if is_enabled is None else bool(is_enabled())


def describe(cpuinfo: str = "/proc/cpuinfo") -> dict:
    """This CPU and TensorFlow's oneDNN state, for benchmark results.

    Args:
        cpuinfo: Linux's CPU description file. Defaults to `"/proc/cpuinfo"`.

    Returns:
        {"cpu_model": the model name ("" if unknown), "machine": `platform.machine()`,
        "vector_extensions": the `VECTOR_EXTENSIONS` this CPU has (`None` where
        /proc/cpuinfo is missing), "onednn": `onednn_enabled()`, "TF_ENABLE_ONEDNN_OPTS": the
        variable's value (`None` if unset)}.
    """
    model, flags = _cpuinfo(cpuinfo)
    extensions = None if flags is None else [f for f in VECTOR_EXTENSIONS if f in flags]
    return {
        "cpu_model": model or platform.processor(),
        "machine": platform.machine(),
        "vector_extensions": extensions,
        "onednn": onednn_enabled(),
        VARIABLE: os.environ.get(VARIABLE),
    }


def summary(description: dict) -> str:
    """One line for a benchmark's printed output, from `describe()`."""
    extensions = description["vector_extensions"]
    return (
        f"CPU {description['cpu_model'] or 'unknown'} ({description['machine']}; "
        f"{' '.join(extensions) if extensions is not None else 'extensions unknown'}); "
        f"TensorFlow oneDNN {_state(description['onednn'])} "
        f"({VARIABLE}={description[VARIABLE] or 'unset'})"
    )


def _state(enabled: bool | None) -> str:
    return "unknown" if enabled is None else ("on" if enabled else "off")


def _cpuinfo(path: str) -> tuple[str, set | None]:
    """The first processor's model name and flags from Linux's cpuinfo; ("", None) elsewhere."""
    try:
        with open(path) as handle:
            text = handle.read()
    except OSError:
        return "", None
    model, flags = "", set()
    for line in text.splitlines():
        key, _, value = line.partition(":")
        key = key.strip()
        if key == "model name" and not model:
            model = value.strip()
        elif key == "flags" and not flags:
            flags = set(value.split())
    return model, flags
