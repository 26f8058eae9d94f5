"""Test-suite guards shared by tests/ and notebooks/: CI never hangs silently.

* ``suite_timeout`` (pyproject, seconds; ``$BAGCERT_SUITE_TIMEOUT`` overrides): a watchdog thread
  ends the whole run once it is over, naming the test that was running and dumping every thread's
  stack. pytest-timeout's per-test ``timeout`` (pyproject) fails a single slow test; the watchdog
  also catches a test stuck in native code, where no signal handler ever runs.
* ``@pytest.mark.subprocess(timeout=...)``: the test runs in a fresh ``python -m pytest`` child
  process, so a segmentation fault or a hang in native code (torch on AVX2-only CPUs) fails that
  one test instead of killing or stalling the run.
"""
import faulthandler
import os
import subprocess
import sys
import threading
import time

import pytest

CHILD = "BAGCERT_PYTEST_CHILD"
_current = {"nodeid": None, "since": None}


def pytest_addoption(parser):
    parser.addini("suite_timeout", "seconds before the watchdog ends the whole run (0: none)",
                  default="0")


def pytest_configure(config):
    config.addinivalue_line("markers", "subprocess(timeout=300): run this test in a child process")
    limit = float(os.environ.get("BAGCERT_SUITE_TIMEOUT") or config.getini("suite_timeout") or 0)
    if limit > 0 and not os.environ.get(CHILD):
        start = time.monotonic()

        def watchdog():
            time.sleep(limit)
            ran = time.monotonic() - (_current["since"] or start)
            msg = (f"\n\nSUITE TIMEOUT: the test suite ran past {limit:.0f} s; the test running "
                   f"was {_current['nodeid'] or '(none: collection or teardown)'} "
                   f"(for {ran:.0f} s). Stacks of every thread follow.\n")
            capman = config.pluginmanager.getplugin("capturemanager")
            if capman is not None:        # write to the terminal, not into a test's capture
                try:
                    capman.suspend_global_capture(in_=False)
                except Exception:
                    pass
            sys.stderr.write(msg)
            sys.stdout.write(msg)
            sys.stdout.flush()
            faulthandler.dump_traceback(file=sys.stderr, all_threads=True)
            sys.stderr.flush()
            os._exit(3)

        threading.Thread(target=watchdog, name="suite-timeout", daemon=True).start()


def pytest_runtest_logstart(nodeid, location):
    _current.update(nodeid=nodeid, since=time.monotonic())


@pytest.hookimpl(tryfirst=True)
def pytest_pyfunc_call(pyfuncitem):
    marker = pyfuncitem.get_closest_marker("subprocess")
    if marker is None or os.environ.get(CHILD):
        return None
    timeout = marker.kwargs.get("timeout", 300)
    env = {**os.environ, CHILD: "1", "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1")}
    cmd = [sys.executable, "-m", "pytest", pyfuncitem.nodeid, "-q", "-x", "-p", "no:cacheprovider",
           "-o", "addopts=", "--timeout", str(timeout)]
    try:
        proc = subprocess.run(cmd, cwd=pyfuncitem.config.rootpath, env=env, capture_output=True,
                              text=True, timeout=timeout + 30)
    except subprocess.TimeoutExpired as e:
        tail = (e.stdout or b"")[-3000:]
        pytest.fail(f"hung: no result from the child process after {timeout + 30} s\n{tail}",
                    pytrace=False)
    if proc.returncode != 0:
        how = (f"killed by signal {-proc.returncode}" if proc.returncode < 0
               else f"exit code {proc.returncode}")
        pytest.fail(f"failed in its child process ({how}):\n{(proc.stdout + proc.stderr)[-4000:]}",
                    pytrace=False)
    return True
