"""Write the golden fingerprint of shipped configs to tests/golden/<config stem>.json.

A golden file is a specification: what a run, a study or a search of a config in `configs/`
does (loss object and options, training attack and its start, forwards, every epoch's learning
rate, optimiser, selection rule, data split, evaluation protocol, teacher; see
`tests/golden_fingerprints.py`). `tests/test_golden_fingerprints.py` recomputes each one from the
current code and fails on any difference. Regenerating is therefore a deliberate act: a changed
file is a change of behaviour, to be named and justified in the commit message that carries it.
Refactors must leave every file byte-identical.

Usage (from the repository root):

    PYTHONPATH=$PWD python tests/golden/make_fingerprints.py configs/new_recipe.yaml
    PYTHONPATH=$PWD python tests/golden/make_fingerprints.py --defaults trades
    PYTHONPATH=$PWD python tests/golden/make_fingerprints.py --all

Each file named is written: a config's tests/golden/<stem>.json, or with `--defaults` the
built-in defaults of a method (`fit --set method.name=<method>` without a config file) in
tests/golden/defaults/<method>.json, and with `--defaults python_api` the Python API's defaults
(every loss class made with no argument, in an `AdversarialDistiller`) in
tests/golden/defaults/python_api.json; `--all` rewrites them all. Nothing else is touched.
"""

from __future__ import annotations

import argparse
import os
import pathlib
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))  # tests/, for the support

from golden_fingerprints import (  # noqa: E402
    CONFIGS,
    DEFAULT_METHODS,
    PYTHON_API,
    canonical_json,
    fingerprint,
    golden_path,
)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(
        prog="python tests/golden/make_fingerprints.py",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("configs", nargs="*", help="config files of configs/ to fingerprint")
    parser.add_argument(
        "--defaults",
        nargs="+",
        default=[],
        choices=DEFAULT_METHODS + (PYTHON_API,),
        metavar="METHOD",
        help=f"the built-in defaults of these methods ({', '.join(DEFAULT_METHODS)}), or "
        f"{PYTHON_API}: the Python API's (each loss class with no argument in a distiller)",
    )
    parser.add_argument("--all", action="store_true", help="every config and every method")
    args = parser.parse_args(argv)
    if args.all == bool(args.configs or args.defaults):
        parser.error("name the configs (or --defaults methods) to fingerprint, or pass --all")
    paths = sorted(CONFIGS.glob("*.yaml")) if args.all else [pathlib.Path(p) for p in args.configs]
    for path in paths:
        if path.resolve().parent != CONFIGS:
            parser.error(f"{path} is not a file of {CONFIGS}: only shipped configs have goldens")
    jobs = [(path, None) for path in paths]
    methods = DEFAULT_METHODS + (PYTHON_API,) if args.all else args.defaults
    jobs += [(None, None if method == PYTHON_API else method) for method in methods]
    for path, method in jobs:
        text = canonical_json(fingerprint(path, method))
        out = golden_path(path, method)
        changed = not out.exists() or out.read_text() != text
        out.parent.mkdir(exist_ok=True)
        out.write_text(text)
        print(f"{out.relative_to(CONFIGS.parent)}: {'written' if changed else 'unchanged'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
