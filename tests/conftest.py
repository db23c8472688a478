import os
from pathlib import Path

import pytest

FIXTURES = Path(__file__).parent / "fixtures"
SMALL = FIXTURES / "gadgets_small.jsonl"

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # tests never reach for the hub


@pytest.fixture
def db(tmp_path):
    """A fresh results store in a temporary folder."""
    return str(tmp_path / "results.db")


@pytest.fixture
def small_data():
    return str(SMALL)
