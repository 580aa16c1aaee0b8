"""Shared fixtures."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """The folder of real datasets: ``$MEDAD_DATA_DIR``, else ``shared/data`` next to the repository.

    Tests using it are skipped (with the reason) when the folder is absent.
    """
    default = Path(__file__).resolve().parents[2] / "shared" / "data"
    path = Path(os.environ.get("MEDAD_DATA_DIR", default))
    if not path.is_dir():
        pytest.skip(f"real data folder {path} not found (set MEDAD_DATA_DIR to run integration tests)")
    return path


@pytest.fixture(autouse=True, scope="session")
def one_thread():
    """The test models are tiny: one thread runs them fastest, and far faster than two threads
    competing for a busy 2-core machine."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
