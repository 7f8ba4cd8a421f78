"""The benchmark harness: DeepBench GEMM (and GRU) suites with baselines measured in the same run."""
from .gemm import gemm_suite, run_gemm_bench

__all__ = ["comparison_args", "gemm_suite", "run_gemm_bench", "torch_or_none"]


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


def comparison_args(doc: str, table: list, extra=None):
    """(arguments, torch, the table's rows to run) for a script comparing against torch
    (``--repeats``, ``--only`` row numbers, and whatever ``extra(parser)`` adds); None where
    torch is missing (its error printed)."""
    import argparse
    ap = argparse.ArgumentParser(description=doc.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=20)
    ap.add_argument("--only", help="comma-separated row numbers of the table (0-based)")
    if extra is not None:
        extra(ap)
    args = ap.parse_args()
    torch = torch_or_none()
    if torch is None:
        return None
    return args, torch, [table[int(i)] for i in args.only.split(",")] if args.only else table
