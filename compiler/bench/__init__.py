"""The benchmark harness: DeepBench GEMM (and GRU) suites with baselines measured in the same run."""
from .gemm import gemm_suite, run_gemm_bench

__all__ = ["gemm_suite", "run_gemm_bench"]
