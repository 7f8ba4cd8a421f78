"""Code generators: sim (simulated accelerators), llvm (host CPU), cuda (NVIDIA GPUs)."""
