"""dgad_tf.cpu: oneDNN on by default on x86, the user's TF_ENABLE_ONEDNN_OPTS respected.

TensorFlow reads the variable once, when it is imported, so each case runs in a fresh Python.
"""

import os
import pathlib
import sys

import pytest
from subprocesses import run_command

from dgad_tf import cpu

ROOT = pathlib.Path(__file__).resolve().parents[1]
WARNING = "imported before dgad_tf"

x86_only = pytest.mark.skipif(not cpu.is_x86(), reason="dgad_tf changes nothing off x86")

REPORT = (
    "import os\n"
    "from tensorflow.python.util import _pywrap_util_port\n"
    "print('variable', os.environ.get('TF_ENABLE_ONEDNN_OPTS'))\n"
    "print('onednn', _pywrap_util_port.IsMklEnabled())\n"
)


def _python(code, variable=None):
    """Run `code` in a fresh Python with TF_ENABLE_ONEDNN_OPTS=`variable` (None: unset)."""
    env = {k: v for k, v in os.environ.items() if k != cpu.VARIABLE}
    env.update(PYTHONPATH=str(ROOT), TF_CPP_MIN_LOG_LEVEL="2")
    if variable is not None:
        env[cpu.VARIABLE] = variable
    done = run_command([sys.executable, "-c", code], env=env)
    assert done.returncode == 0, done.stderr[-3000:]
    lines = dict(line.split(" ", 1) for line in done.stdout.splitlines() if " " in line)
    return lines, done.stderr


@x86_only
def test_importing_dgad_tf_first_turns_onednn_on():
    lines, stderr = _python("import dgad_tf\n" + REPORT)
    assert lines == {"variable": "1", "onednn": "True"}
    assert WARNING not in stderr


@x86_only
def test_a_command_module_turns_onednn_on_before_tensorflow():
    # `python -m dgad_tf.teachers.convert` and the other commands import their package first.
    lines, _ = _python("import dgad_tf.teachers.convert\n" + REPORT)
    assert lines == {"variable": "1", "onednn": "True"}


def test_users_zero_is_respected():
    lines, stderr = _python("import dgad_tf\n" + REPORT, variable="0")
    assert lines == {"variable": "0", "onednn": "False"}
    assert WARNING not in stderr


@x86_only
def test_tensorflow_imported_first_with_onednn_off_warns_once():
    # TensorFlow starts with oneDNN off (here via the variable, as TensorFlow's default does on
    # an AVX2-only CPU); the variable is then gone, so the user did not ask for it off.
    code = (
        "import os\n"
        "import tensorflow\n"
        "del os.environ['TF_ENABLE_ONEDNN_OPTS']\n"
        "import dgad_tf\n"
        "import dgad_tf.fit\n" + REPORT
    )
    lines, stderr = _python(code, variable="0")
    assert lines["onednn"] == "False"
    warnings = [line for line in stderr.splitlines() if WARNING in line]
    assert len(warnings) == 1, stderr[-3000:]
    assert "TF_ENABLE_ONEDNN_OPTS=1" in warnings[0]


def test_tensorflow_imported_first_warns_only_if_onednn_is_off():
    # Unset variable: TensorFlow's own default decides (on with AVX-512 VNNI/BF16 or AMX).
    lines, stderr = _python("import tensorflow\nimport dgad_tf\n" + REPORT)
    warnings = [line for line in stderr.splitlines() if WARNING in line]
    expected = 0 if lines["onednn"] == "True" or not cpu.is_x86() else 1
    assert len(warnings) == expected, stderr[-3000:]


def test_tensorflow_imported_first_with_users_zero_does_not_warn():
    lines, stderr = _python("import tensorflow\nimport dgad_tf\n" + REPORT, variable="0")
    assert lines == {"variable": "0", "onednn": "False"}
    assert WARNING not in stderr


def test_non_x86_cpus_are_left_to_tensorflow(monkeypatch):
    monkeypatch.delenv(cpu.VARIABLE, raising=False)
    cpu.use_onednn_by_default(machine="aarch64")
    assert cpu.VARIABLE not in os.environ
    cpu.use_onednn_by_default(machine="AMD64")
    assert os.environ[cpu.VARIABLE] == "1"


def test_describe_reads_the_model_and_vector_extensions(tmp_path):
    cpuinfo = tmp_path / "cpuinfo"
    cpuinfo.write_text(
        "processor\t: 0\nmodel name\t: AMD EPYC 9B14\n"
        "flags\t\t: fpu avx2 avx512f avx avx512vl avx512_vnni fma bmi2 avx512_bf16\n\n"
        "processor\t: 1\nmodel name\t: AMD EPYC 9B14\n"
        "flags\t\t: fpu avx2 avx512f avx avx512vl avx512_vnni fma bmi2 avx512_bf16\n"
    )
    description = cpu.describe(str(cpuinfo))
    assert description["cpu_model"] == "AMD EPYC 9B14"
    # Only the oneDNN-relevant extensions, in VECTOR_EXTENSIONS' order.
    expected = ["avx", "avx2", "fma", "avx512f", "avx512_vnni", "avx512_bf16"]
    assert description["vector_extensions"] == expected
    assert description["onednn"] in (True, False)
    assert description[cpu.VARIABLE] == os.environ.get(cpu.VARIABLE)
    line = cpu.summary(description)
    assert "AMD EPYC 9B14" in line and " ".join(expected) in line
    assert f"oneDNN {'on' if description['onednn'] else 'off'}" in line


def test_describe_without_cpuinfo_says_the_extensions_are_unknown(tmp_path):
    description = cpu.describe(str(tmp_path / "missing"))
    assert description["vector_extensions"] is None
    assert "extensions unknown" in cpu.summary(description)
