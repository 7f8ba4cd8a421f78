#!/usr/bin/env python3
"""Convolutions on the cpu target against torch.conv2d (oneDNN), measured in the same run.

    python scripts/bench_conv_cpu.py [--repeats 20] [--only 0,3]

For 3x3 and pointwise convolution layers of the sizes quoted in the README and
docs/cpu.md (NCHW, and four in NHWC against torch's channels_last): our median time, torch's, their ratio (torch / ours: above 1 is faster than
torch), the plan the cpu backend took (padded rows, im2col, merged rows, gathered rows, taps folded into K)
and the largest difference from torch's result.  Both sides are timed in alternating rounds
(`compiler.bench.gemm._timed_sides`); this project's VMs move 10-40% in speed between runs,
so compare within a run.  Needs torch (`pip install -e '.[torch]'`).
"""
from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import numpy as np  # noqa: E402

import hw_models  # noqa: E402
import kernels  # noqa: E402
from compiler.api import load_kernel  # noqa: E402
from compiler.backends.llvm.native import compile_cpu  # noqa: E402
from compiler.bench import comparison_args  # noqa: E402
from compiler.bench.gemm import _timed_sides  # noqa: E402
from ir.bind import bind  # noqa: E402

LAYERS = [("conv2d", dict(N=8, C=64, H=30, W=30, F=128, R=3, S=3)),
          ("conv2d", dict(N=8, C=128, H=58, W=58, F=128, R=3, S=3)),
          ("conv2d", dict(N=16, C=256, H=16, W=16, F=256, R=3, S=3)),
          ("conv2d", dict(N=32, C=512, H=9, W=9, F=512, R=3, S=3)),
          ("pointwise_conv2d", dict(N=8, C=64, H=28, W=28, F=128)),
          ("pointwise_conv2d", dict(N=16, C=256, H=14, W=14, F=256)),
          ("pointwise_conv2d", dict(N=8, C=128, H=56, W=56, F=128)),
          ("pointwise_conv2d", dict(N=32, C=512, H=7, W=7, F=512)),
          # channels innermost: torch with channels_last activations and filters
          ("conv2d_nhwc", dict(N=8, C=64, H=30, W=30, F=128, R=3, S=3)),
          ("conv2d_nhwc", dict(N=16, C=256, H=16, W=16, F=256, R=3, S=3)),
          ("conv2d_nhwc", dict(N=8, C=128, H=58, W=58, F=128, R=3, S=3)),
          ("conv2d_nhwc", dict(N=32, C=512, H=9, W=9, F=512, R=3, S=3)),
          # layers: the bias and ReLU fused into the convolution, against torch's conv2d with
          # its bias, then relu
          ("conv2d_bias_relu", dict(N=8, C=64, H=30, W=30, F=128, R=3, S=3)),
          ("conv2d_nhwc_bias_relu", dict(N=8, C=64, H=30, W=30, F=128, R=3, S=3))]


def plan_kind(p) -> str:
    kinds = [name for name, on in (("im2col", p.im2col), ("padded rows", p.pad), ("merged rows", p.merged),
                                   ("gathered rows" if p.gathers_a() else "rows as one", p.rows),
                                   ("taps in K", p.kfold), ("taps as passes", p.taps)) if on]
    return ", ".join(kinds) or "plain"


def main() -> int:
    setup = comparison_args(__doc__, LAYERS)
    if setup is None:
        return 1
    args, torch, rows = setup
    target = hw_models.load("cpu")
    print(f"{'kernel':21s} {'N x C x H x W -> F (R x S)':28s} {'ours ms':>9s} {'torch ms':>9s} {'ratio':>6s}  "
          f"{'max diff':>8s}  plan")
    ratios = []
    for name, sizes in rows:
        k = load_kernel(str(kernels.path(name)))
        b = bind(k, sizes)
        rng = np.random.default_rng(0)
        ins = {x.name: rng.standard_normal(b.shapes[x.name]).astype(np.float32) for x in k.inputs}
        nk = compile_cpu(k, b, target)
        xs = [ins[x.name] for x in k.inputs]
        ti, tw = torch.from_numpy(xs[0]), torch.from_numpy(xs[1])
        tb = torch.from_numpy(xs[2]) if name.endswith("_bias_relu") else None
        nhwc = "_nhwc" in name
        if nhwc:  # NHWC / RSCF as NCHW / FCRS views in channels_last memory (torch's NHWC)
            ti = ti.permute(0, 3, 1, 2)
            tw = tw.permute(3, 2, 0, 1).contiguous(memory_format=torch.channels_last)
        if tw.dim() == 2:
            tw = tw[:, :, None, None]
        def theirs(ti=ti, tw=tw, tb=tb):
            out = torch.nn.functional.conv2d(ti, tw, tb)
            return out if tb is None else torch.relu(out)
        want = theirs()
        want = (want.permute(0, 2, 3, 1) if nhwc else want).numpy()
        diff = float(np.max(np.abs(nk(ins)["O"] - want)))
        med = _timed_sides({"ours": lambda: nk.run(xs), "torch": theirs}, repeats=args.repeats).medians()
        ratio = med["torch"] / med["ours"]
        ratios.append(ratio)
        shape = f"{sizes['N']}x{sizes['C']}x{sizes['H']}x{sizes['W']} -> {sizes['F']}" + \
            (f" ({sizes['R']}x{sizes['S']})" if "R" in sizes else "")
        print(f"{name:21s} {shape:28s} {med['ours'] * 1e3:9.3f} {med['torch'] * 1e3:9.3f} {ratio:6.2f}  "
              f"{diff:8.1e}  {plan_kind(nk.plans[0])}", flush=True)
    print(f"geometric-mean ratio vs torch.conv2d {torch.__version__}: {float(np.exp(np.mean(np.log(ratios)))):.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
