"""What a CPU host needs to train well, set up before JAX starts (no-ops on GPU and TPU).

host_allocator.py  keep freed host memory for reuse (XLA:CPU's per-step scratch)
cpu_devices.py     one JAX device per core, so the step runs data-parallel as on accelerators
"""
