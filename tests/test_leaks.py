"""The leak watch of conftest.py fails a test that leaves a task or a thread running."""

from __future__ import annotations

from pathlib import Path

import pytest

pytest_plugins = ["pytester"]

CONFTEST = Path(__file__).with_name("conftest.py")


def run(pytester: pytest.Pytester, test: str) -> pytest.RunResult:
    pytester.makeconftest(CONFTEST.read_text())
    (pytester.path / "tests").mkdir()
    (pytester.path / "tests" / "__init__.py").write_text("")
    (pytester.path / "tests" / "brokers.py").write_text(
        (CONFTEST.parent / "brokers.py").read_text())  # what the conftest imports
    pytester.makepyfile(test_case=test)
    pytester.makeini("[pytest]\nasyncio_mode = auto\nasyncio_default_fixture_loop_scope = function\n")
    return pytester.runpytest_subprocess("-p", "no:cacheprovider")


def test_a_task_left_running_fails_the_test(pytester: pytest.Pytester) -> None:
    result = run(pytester, """
import asyncio

async def test_leaves_a_task() -> None:
    asyncio.get_running_loop().create_task(asyncio.Event().wait(), name="forgotten")
""")
    result.assert_outcomes(passed=1, errors=1)
    result.stdout.fnmatch_lines(["*tasks still running after the test*forgotten*"])


def test_a_thread_left_running_fails_the_test(pytester: pytest.Pytester) -> None:
    result = run(pytester, """
import threading

stop = threading.Event()

def test_leaves_a_thread() -> None:
    threading.Thread(target=stop.wait, name="forgotten-thread", daemon=True).start()

def test_then_stops_it() -> None:
    stop.set()
""")
    result.assert_outcomes(passed=2, errors=1)
    result.stdout.fnmatch_lines(["*threads still running after the test*forgotten-thread*"])


def test_a_test_that_cleans_up_passes(pytester: pytest.Pytester) -> None:
    result = run(pytester, """
import asyncio
import threading

async def test_cleans_up() -> None:
    task = asyncio.create_task(asyncio.Event().wait())
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)
    done = threading.Event()
    thread = threading.Thread(target=done.wait)
    thread.start()
    done.set()
""")
    result.assert_outcomes(passed=1)
