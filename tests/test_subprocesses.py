"""The tests' subprocess watchdog (`tests/subprocesses.py`): a hang fails, slowness does not."""

import subprocess
import sys
import time

import pytest
from subprocesses import group_cpu_seconds, run_command, watch

if group_cpu_seconds(1) is None:
    pytest.skip("the watchdog reads CPU time from /proc (Linux)", allow_module_level=True)


def test_a_command_that_works_longer_than_the_idle_limit_is_not_stopped():
    # Five CPU seconds of work take at least five wall-clock seconds, however fast the machine:
    # a wall-clock limit of two would stop it; the CPU-time watchdog must not.
    work = "import time\nwhile time.process_time() < 5: pass\nprint('done')"
    result = run_command([sys.executable, "-c", work], idle_limit=2.0, check_every=0.2)
    assert result.returncode == 0 and result.stdout.strip() == "done"


def test_a_command_that_hangs_is_stopped_after_the_idle_limit():
    started = time.monotonic()
    with pytest.raises(pytest.fail.Exception, match="hung: no CPU time used"):
        run_command(
            [sys.executable, "-c", "import time; print('waiting', flush=True); time.sleep(600)"],
            idle_limit=3.0,
            check_every=0.2,
        )
    assert time.monotonic() - started < 60


def test_a_busy_command_that_never_ends_is_stopped_at_the_ceiling():
    started = time.monotonic()
    with pytest.raises(pytest.fail.Exception, match=r"still running after \d+ s \(ceiling 3 s\)"):
        run_command([sys.executable, "-c", "while True: pass"], ceiling=3.0, check_every=0.2)
    assert time.monotonic() - started < 60


def test_the_output_and_exit_code_come_back_as_subprocess_run_gives_them():
    code = "import sys; print('out'); print('err', file=sys.stderr); sys.exit(3)"
    result = run_command([sys.executable, "-c", code])
    assert (result.returncode, result.stdout, result.stderr) == (3, "out\n", "err\n")


def test_one_process_waiting_while_another_works_is_not_a_hang():
    # The first sleeps 4.5 s (longer than the idle limit) while the second works five CPU seconds
    # (at least five wall-clock seconds), as a worker waits at a collective: summed CPU is progress.
    busy = "import time\nwhile time.process_time() < 5: pass\nprint('worked')"
    waiting = subprocess.Popen(
        [sys.executable, "-c", "import time; time.sleep(4.5); print('waited')"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    working = subprocess.Popen(
        [sys.executable, "-c", busy],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    outputs = watch(waiting, working, idle_limit=3.0, check_every=0.2)
    assert [stdout.strip() for stdout, _ in outputs] == ["waited", "worked"]
