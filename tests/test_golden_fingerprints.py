"""Every shipped config still does what its golden fingerprint (tests/golden/*.json) says.

The fingerprint (`tests/golden_fingerprints.py`) is recomputed from the current code and compared
with the committed file byte for byte; a difference fails naming the config and every key that
moved. A config without a golden file, or a golden file without its config, fails too. The built-in
defaults of each method (`fit --set method.name=<method>` without a config file) are pinned the
same way, in tests/golden/defaults/. No
training and no data beyond the embedded digits: nothing here is skipped.
"""

import pathlib

import pytest
from golden_fingerprints import (
    CONFIGS,
    DEFAULT_METHODS,
    GOLDEN,
    PYTHON_API,
    canonical_json,
    differences,
    fingerprint,
    golden_path,
)

REPO = CONFIGS.parent
SHIPPED = sorted(CONFIGS.glob("*.yaml"))
HOW_TO_REGENERATE = (
    "PYTHONPATH=$PWD python tests/golden/make_fingerprints.py configs/{name} (a changed "
    "fingerprint is a behaviour change: justify it in the commit message)"
)
HOW_TO_DEFAULTS = HOW_TO_REGENERATE.replace("configs/{name}", "--defaults {}")


def _shown(path: pathlib.Path) -> str:
    return str(path.relative_to(REPO)) if path.is_relative_to(REPO) else str(path)


def check_against_golden(path, method=None) -> None:
    """Fail with a readable diff unless the fingerprint of the config `path` (of `method`'s
    built-in defaults when `path` is None, of the Python API's defaults when both are None)
    equals its golden file exactly."""
    import json

    if path is None and method is None:
        what, regenerate = "the Python API's defaults", HOW_TO_DEFAULTS.format(PYTHON_API)
    elif path is None:
        what, regenerate = f"the built-in defaults of {method}", HOW_TO_DEFAULTS.format(method)
    else:
        what, regenerate = f"configs/{path.name}", HOW_TO_REGENERATE.format(name=path.name)
    golden = golden_path(path, method)
    if not golden.exists():
        pytest.fail(
            f"{what}: no golden fingerprint {_shown(golden)}; generate it with {regenerate}",
            pytrace=False,
        )
    current = canonical_json(fingerprint(path, method))
    stored = golden.read_text()
    if current != stored:
        lines = differences(json.loads(stored), json.loads(current)) or [
            "(same values, other text: the file was not written by make_fingerprints.py)"
        ]
        pytest.fail(
            f"{what}: the fingerprint differs from {_shown(golden)}:\n  "
            + "\n  ".join(lines)
            + f"\nIf the change is meant, regenerate with {regenerate}",
            pytrace=False,
        )


@pytest.mark.parametrize("path", SHIPPED, ids=[p.name for p in SHIPPED])
def test_config_matches_its_golden_fingerprint(path):
    check_against_golden(path)


@pytest.mark.parametrize("method", DEFAULT_METHODS)
def test_built_in_defaults_of_each_method_match_their_golden_fingerprint(method):
    check_against_golden(None, method)


def test_python_api_defaults_match_their_golden_fingerprint():
    check_against_golden(None, None)


def test_every_golden_file_has_its_config():
    orphans = sorted(
        p.name for p in GOLDEN.glob("*.json") if not (CONFIGS / f"{p.stem}.yaml").exists()
    ) + sorted(
        f"defaults/{p.name}"
        for p in (GOLDEN / "defaults").glob("*.json")
        if p.stem not in DEFAULT_METHODS + (PYTHON_API,)
    )
    assert not orphans, (
        f"tests/golden holds fingerprints of configs that are gone: {orphans}; delete them "
        "in the commit that removes or renames the config, saying why"
    )


def test_a_new_config_without_a_golden_file_fails_saying_how_to_make_one(tmp_path, monkeypatch):
    import golden_fingerprints

    new = tmp_path / "configs" / "new_recipe.yaml"
    new.parent.mkdir()
    new.write_text((CONFIGS / "quickstart.yaml").read_text())
    monkeypatch.setattr(golden_fingerprints, "GOLDEN", tmp_path / "golden")
    with pytest.raises(pytest.fail.Exception) as failure:
        check_against_golden(new)
    message = str(failure.value)
    assert "configs/new_recipe.yaml: no golden fingerprint" in message
    assert "tests/golden/make_fingerprints.py configs/new_recipe.yaml" in message


def test_a_changed_value_is_named_by_its_key():
    golden = {"run": {"training": {"loss": {"options": {"beta": 6.0}}}, "lr": [0.1, 0.01]}}
    current = {"run": {"training": {"loss": {"options": {"beta": 6}}}, "lr": [0.1, 0.1]}}
    assert differences(golden, current) == [
        "`run.lr[1]`: golden 0.01, now 0.1",
        "`run.training.loss.options.beta`: golden 6.0, now 6",
    ]
