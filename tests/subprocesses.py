"""`run_command`: a test's subprocess, stopped when it hangs, never merely for being slow.

A fixed timeout fails a correct command on a slow or loaded machine (a test that is quick alone
takes many times as long beside other jobs on the same cores), and a timeout generous enough for
that hides a hang for as long. A process that is working uses CPU time, however slowly the
machine gives it; a hung one (a deadlock, a wait on input or on a lock that never comes) does
not. So the watchdog kills the command when its session has used no CPU time for `idle_limit`
seconds, and, for a busy loop that never ends, after `ceiling` seconds of wall-clock time.
Where /proc cannot be read (not Linux), only the ceiling applies.
`watch` does the same for processes a test starts itself, e.g. two workers that wait for each
other (the CPU time of either counts as progress).
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
        **kwargs: passed to `subprocess.Popen` (`cwd`, `env`; `input` is not supported).
    """
    with subprocess.Popen(
        args,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
        **kwargs,
    ) as process:
        ((stdout, stderr),) = watch(
            process, idle_limit=idle_limit, ceiling=ceiling, check_every=check_every
        )
    return subprocess.CompletedProcess(args, process.returncode, stdout, stderr)


def watch(
    *processes: subprocess.Popen,
    idle_limit: float = 300.0,
    ceiling: float = 3600.0,
    check_every: float = 1.0,
) -> list:
    """`communicate()` with each of `processes` under one watchdog; each must lead its session.

    For processes a test starts itself (`subprocess.Popen(..., start_new_session=True)`), e.g.
    workers that wait for each other: the CPU time of all of them counts as progress, so one
    waiting while another works is not a hang, and all waiting is. The keyword arguments are
    `run_command`'s. Returns [(stdout, stderr)] in the order of `processes`.
    """

    def cpu_seconds():
        seconds = [group_cpu_seconds(process.pid) for process in processes]
        return None if None in seconds else sum(seconds)

    started = time.monotonic()
    outputs = [None] * len(processes)
    # Gains are summed sample to sample: a child process that ends takes its CPU time out of
    # the total, which must not read as a stall.
    previous, gained, last_progress = cpu_seconds() or 0.0, 0.0, started
    while None in outputs:
        for index, process in enumerate(processes):
            if outputs[index] is None:
                try:
                    outputs[index] = process.communicate(timeout=check_every / len(processes))
                except subprocess.TimeoutExpired:
                    pass
        now = time.monotonic()
        cpu = cpu_seconds()
        if cpu is None:
            last_progress = now  # nothing to watch: only the ceiling applies
        else:
            gained, previous = gained + max(0.0, cpu - previous), cpu
            if gained >= _PROGRESS_CPU_SECONDS:
                gained, last_progress = 0.0, now
        idle, elapsed = now - last_progress, now - started
        if None in outputs and (idle > idle_limit or elapsed > ceiling):
            why = (
                f"no CPU time used for {idle:.0f} s (idle_limit {idle_limit:g} s)"
                if idle > idle_limit
                else f"still running after {elapsed:.0f} s (ceiling {ceiling:g} s)"
            )
            report = []
            for index, process in enumerate(processes):
                if outputs[index] is None:
                    os.killpg(process.pid, signal.SIGKILL)
                    outputs[index] = process.communicate()
                stdout, stderr = (text or "" for text in outputs[index])
                report.append(
                    f"{subprocess.list2cmdline(map(str, process.args))}\n"
                    f"stdout tail:\n{stdout[-2000:]}\nstderr tail:\n{stderr[-2000:]}"
                )
            pytest.fail(f"hung: {why}; killed.\n" + "\n".join(report))
    return outputs
