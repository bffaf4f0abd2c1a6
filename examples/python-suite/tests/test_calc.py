"""Example tests for the pytest runner: fast and slow passes, failures, skips, parameters.

The flaky test keeps its state in the directory named by TESSERA_EXAMPLE_STATE_DIR: its first run
in a fresh directory fails, every later run passes. Without the variable it passes.
"""

import os
import sys
import time

import pytest


def seen_before(name):
    state = os.environ.get("TESSERA_EXAMPLE_STATE_DIR")
    if not state:
        return True
    marker = os.path.join(state, "python-" + name)
    if os.path.exists(marker):
        return True
    with open(marker, "w") as f:
        f.write("ran once\n")
    return False


def test_add():
    print("adding 2 and 2")
    assert 2 + 2 == 4


def test_add_many():
    # Its name starts with another test's name: runners must select tests exactly.
    assert sum([1, 2, 3]) == 6


def test_slow():
    time.sleep(0.4)
    assert True


def test_wrong_answer():
    print("about to compare")
    print("to stderr", file=sys.stderr)
    assert 2 + 2 == 5


@pytest.mark.skip(reason="shows how runners report skipped tests")
def test_skipped():
    pass


def test_flaky_once():
    assert seen_before("test_flaky_once"), "first run fails on purpose"


@pytest.mark.parametrize("a,b,total", [(1, 2, 3), (2, 2, 5), (0.5, 0.25, 0.75)])
def test_param(a, b, total):
    assert a + b == total


class TestGroup:
    def test_in_class(self):
        assert "tessera".startswith("tess")

    def test_error_in_fixture(self, missing_fixture):
        pass
