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


def pytest_addoption(parser):
    parser.addoption("--update-golden", action="store_true", help="rewrite tests/golden/* from current output")


@pytest.fixture
def golden(request):
    """Compare text with tests/golden/NAME (or rewrite it with --update-golden)."""
    update = request.config.getoption("--update-golden")

    def check(name: str, text: str):
        path = Path(__file__).parent / "golden" / name
        if update or not path.exists():
            path.parent.mkdir(exist_ok=True)
            path.write_text(text)
            if not update:
                pytest.fail(f"golden file {name} was missing and has been written; rerun")
        assert text == path.read_text(), f"output differs from tests/golden/{name} (run pytest --update-golden)"
    return check
