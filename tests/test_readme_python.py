"""README's "Use from Python" section runs as written: its code blocks, in order, in a new process.

The blocks are concatenated and run in an empty folder, so what they write (the export) lands
there; a renamed function, a changed argument or an example that no longer trains fails here.
"""

import pathlib
import re
import sys

from subprocesses import run_command

README = pathlib.Path(__file__).resolve().parents[1] / "README.md"
SECTION = "## Use from Python"


def python_blocks(text: str, section: str = SECTION) -> list[str]:
    """The ```python blocks between `section` and the next heading of the same level."""
    start = text.index(section + "\n")
    rest = text[start + len(section) :]
    end = re.search(r"^## ", rest, flags=re.MULTILINE)
    body = rest[: end.start()] if end else rest
    return re.findall(r"^```python\n(.*?)^```$", body, flags=re.MULTILINE | re.DOTALL)


def test_the_section_has_the_promised_examples():
    blocks = python_blocks(README.read_text())
    code = "\n".join(blocks)
    assert len(blocks) >= 3
    for name in ("AdversarialDistiller(", "evaluate_robustness(", "AutoAttack(", "export_student("):
        assert name in code, name


def test_block_extraction_stops_at_the_next_section():
    text = "## Use from Python\n```python\na = 1\n```\n## Next\n```python\nb = 2\n```\n"
    assert python_blocks(text) == ["a = 1\n"]


def test_readme_python_examples_run(tmp_path):
    code = "\n".join(python_blocks(README.read_text()))
    script = tmp_path / "readme_examples.py"
    script.write_text(code)
    result = run_command(
        [sys.executable, str(script)],
        cwd=tmp_path,
    )
    assert result.returncode == 0, result.stderr[-4000:]
