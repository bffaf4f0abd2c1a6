"""A second module, in a sub-package directory, with a test name that also exists elsewhere."""

import time


def test_add():
    time.sleep(0.2)
    assert 1 + 1 == 2
