"""Shared fixtures."""

from __future__ import annotations

import os
from pathlib import Path

import pytest


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
