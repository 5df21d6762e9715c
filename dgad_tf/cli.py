"""What every `python -m dgad_tf.*` command shares: help layout, argument types, quiet start-up.

The commands keep one promise: a problem with the input exits with code 2 and one line
naming it, before any work is done or anything is written; code 1 is for failures during the
work itself.
"""

from __future__ import annotations

import argparse
import logging
import os
import shlex
import sys

EXIT_USAGE = 2


class HelpFormatter(argparse.RawDescriptionHelpFormatter, argparse.ArgumentDefaultsHelpFormatter):
    """Keeps the module docstring's layout and shows every option's default."""


def parser(prog: str, doc: str) -> argparse.ArgumentParser:
    """An argument parser with the shared help layout and a `--verbose` flag."""
    result = argparse.ArgumentParser(prog=prog, description=doc, formatter_class=HelpFormatter)
    result.add_argument(
        "--verbose",
        action="store_true",
        help="also show TensorFlow's own start-up and C++ log lines",
    )
    return result


def add_config_arguments(parser: argparse.ArgumentParser, config_help: str) -> None:
    """`--config FILE`, repeatable `--set section.key=value` and `--quiet`, as fit and tune take."""
    parser.add_argument("--config", help=config_help)
    parser.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="SECTION.KEY=VALUE",
        help="override one value; repeatable",
    )
    parser.add_argument("--quiet", action="store_true", help="log lines only, no progress bars")


def config_overrides(args: argparse.Namespace, *extra: str) -> list[str]:
    """The `--set` overrides, then `extra`, then `--quiet` as `output.quiet=true`."""
    return [*args.set, *extra, *(["output.quiet=true"] if args.quiet else [])]


def command_line(module: str, argv=None) -> str:
    """The command as the user typed it (`argv` or the process's), for a run's records."""
    return shlex.join(["python", "-m", module, *(sys.argv[1:] if argv is None else argv)])


def run_work(work, *args, **kwargs):
    """`work(*args, **kwargs)`, or the usage exit code if it refuses its input.

    A config problem found late, a run folder that is not this run's, a folder another
    process holds, or an export that ran out of disk (ConfigError, RunError, FolderBusy,
    `serving.ExportDiskFull`, whose message names the disk and the space needed) prints one
    `error:` line and returns EXIT_USAGE, as a bad argument would. Returns (exit code or None,
    the work's result).
    """
    from dgad_tf.config import ConfigError
    from dgad_tf.rundir import FolderBusy, RunError

    try:
        return None, work(*args, **kwargs)
    except (RunError, ConfigError, FolderBusy) as err:
        return error(str(err)), None
    except OSError as err:
        from dgad_tf.serving import ExportDiskFull  # loaded already: only an export raises it

        if isinstance(err, ExportDiskFull):
            return error(str(err)), None
        raise


def int_at_least(minimum: int):
    """An argparse type: an integer >= `minimum` (argparse then exits 2 naming the option)."""

    def parse(text):
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"must be an integer; received {text!r}") from None
        if value < minimum:
            raise argparse.ArgumentTypeError(f"must be >= {minimum}; received {value}")
        return value

    return parse


def error(message: str) -> int:
    """Print `error: message` to stderr; returns the usage exit code."""
    print(f"error: {message}", file=sys.stderr)
    return EXIT_USAGE


def start(verbose: bool = False, fmt: str = "%(asctime)s %(levelname)s %(message)s") -> None:
    """Configure logging and load TensorFlow without its start-up noise (unless `verbose`).

    TensorFlow 2.21 prints its C++ start-up lines (oneDNN, CUDA probing) before its own log
    level applies, so they are silenced by pointing the process's stderr at /dev/null while it
    loads. Devices are only listed, not initialised: logical CPUs can still be configured after.
    """
    logging.basicConfig(level=logging.INFO, format=fmt)
    if verbose:
        import tensorflow  # noqa: F401

        return
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    sys.stderr.flush()
    saved, null = os.dup(2), os.open(os.devnull, os.O_WRONLY)
    os.dup2(null, 2)
    try:
        import tensorflow as tf

        tf.config.list_physical_devices()
    finally:
        os.dup2(saved, 2)
        os.close(saved)
        os.close(null)
    # TensorFlow's Python logger has its own handler; propagating too would print lines twice.
    logging.getLogger("tensorflow").propagate = False
    logging.getLogger("tensorflow").setLevel(logging.ERROR)
