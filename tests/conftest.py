"""Fixtures shared by test modules (plain helpers they import are in tests/helpers.py)."""

from pathlib import Path

import pytest
import torch

from tests.helpers import make_tiny_run


@pytest.fixture(scope="module")
def one_thread():
    """For modules with tiny models on the shared test machine: a second thread only waits.
    Use with `pytestmark = pytest.mark.usefixtures("one_thread")`."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="session")
def tiny_run(tmp_path_factory) -> Path:
    """A run with a 30-step model, shared by the modules that test translation plumbing."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return make_tiny_run(tmp_path_factory.mktemp("tiny"))
    finally:
        torch.set_num_threads(threads)
