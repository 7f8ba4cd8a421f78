import os
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
CORPUS = ROOT.parent / "shared" / "data" / "tc_corpus"
KERNELS = ROOT / "kernels"


@pytest.fixture
def corpus():
    if not CORPUS.is_dir():
        pytest.skip("../shared/data/tc_corpus is not present")
    return CORPUS


def pytest_collection_modifyitems(config, items):
    has_gpu = os.path.exists("/dev/nvidia0")
    skip = pytest.mark.skip(reason="needs an NVIDIA GPU")
    for it in items:
        if "gpu" in it.keywords and not has_gpu:
            it.add_marker(skip)
