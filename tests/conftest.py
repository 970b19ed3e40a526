import os
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tools"))
# Configs refer to data/demo relative to the repository root.
os.chdir(ROOT)


@pytest.fixture(scope="session")
def repo_root() -> Path:
    return ROOT
