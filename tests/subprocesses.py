"""`run_command`: a test's subprocess, stopped when it hangs, never merely for being slow.

A fixed timeout fails a correct command on a slow or loaded machine (the same test takes 40 s
alone and several minutes beside four other jobs on two cores), and a timeout generous enough
for that hides a hang for as long. A process that is working uses CPU time, however slowly the
machine gives it; a hung one (a deadlock, a wait on input or on a lock that never comes) does
not. So the watchdog kills the command when its process group has used no CPU for `idle_limit`
seconds, and, for a busy loop that never ends, after `ceiling` seconds of wall-clock time.
Where /proc cannot be read (not Linux), only the ceiling applies.
"""

from __future__ import annotations

import os
import pathlib
import signal
import subprocess
import time

import pytest

# CPU seconds a process group must gain to count as working; a blocked one gains none.
_PROGRESS_CPU_SECONDS = 0.05
_TICKS = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100


def group_cpu_seconds(session: int) -> float | None:
    """CPU time (user + system) of every live process in `session`, or None without /proc."""
    proc = pathlib.Path("/proc")
    if not proc.is_dir():
        return None
    total = 0
    for stat in proc.glob("[0-9]*/stat"):
        try:
            text = stat.read_text()
        except OSError:  # the process ended while we looked
            continue
        # The command name (field 2) may hold spaces; the fields after it are space-separated.
        fields = text[text.rindex(")") + 2 :].split()
        if int(fields[3]) == session:  # field 6, the session id
            total += sum(int(value) for value in fields[11:15])  # utime stime cutime cstime
    return total / _TICKS


def run_command(
    args, *, idle_limit: float = 300.0, ceiling: float = 3600.0, check_every: float = 1.0, **kwargs
) -> subprocess.CompletedProcess:
    """Run `args` as `subprocess.run(args, capture_output=True, text=True, **kwargs)` would.

    The command runs in its own session; the test fails (and the whole session is killed) when
    the session has used no CPU time for `idle_limit` seconds, or after `ceiling` seconds.

    Args:
        args: the command.
        idle_limit: seconds without CPU progress that count as a hang. Defaults to 300.
        ceiling: wall-clock seconds after which even a busy command counts as a hang.
            Defaults to 3600.
        check_every: seconds between two looks at the command's CPU time. Defaults to 1.
        **kwargs: passed to `subprocess.Popen` (`cwd`, `env`, `input` is not supported).
    """
    started = time.monotonic()
    with subprocess.Popen(
        args,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
        **kwargs,
    ) as process:
        # Gains are summed sample to sample: a child process that ends takes its CPU time out
        # of the total, which must not read as a stall.
        previous, gained, last_progress = group_cpu_seconds(process.pid) or 0.0, 0.0, started
        while True:
            try:
                stdout, stderr = process.communicate(timeout=check_every)
                break
            except subprocess.TimeoutExpired:
                pass
            now = time.monotonic()
            cpu = group_cpu_seconds(process.pid)
            if cpu is None:
                last_progress = now  # nothing to watch: only the ceiling applies
            else:
                gained, previous = gained + max(0.0, cpu - previous), cpu
                if gained >= _PROGRESS_CPU_SECONDS:
                    gained, last_progress = 0.0, now
            idle, elapsed = now - last_progress, now - started
            if idle > idle_limit or elapsed > ceiling:
                os.killpg(process.pid, signal.SIGKILL)
                stdout, stderr = process.communicate()
                why = (
                    f"no CPU time used for {idle:.0f} s (idle_limit {idle_limit:g} s)"
                    if idle > idle_limit
                    else f"still running after {elapsed:.0f} s (ceiling {ceiling:g} s)"
                )
                pytest.fail(
                    f"{subprocess.list2cmdline(map(str, args))} hung: {why}; killed.\n"
                    f"stdout tail:\n{stdout[-2000:]}\nstderr tail:\n{stderr[-2000:]}"
                )
    return subprocess.CompletedProcess(args, process.returncode, stdout, stderr)
