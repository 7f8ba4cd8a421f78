"""The benchmark harness: DeepBench GEMM (and GRU) suites with baselines measured in the same run."""
from .gemm import gemm_suite, run_gemm_bench

__all__ = ["gemm_suite", "run_gemm_bench", "torch_or_none"]


def torch_or_none():
    """torch, or None with an error printed (the scripts that compare against it need it: an
    optional extra, ``pip install -e '.[torch]'``)."""
    import sys
    try:
        import torch
    except ImportError:
        print("error: torch is not installed (pip install -e '.[torch]')", file=sys.stderr)
        return None
    return torch
