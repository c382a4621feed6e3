"""XLA flags for every compile the tests make, in the test processes and the runs they start.

Tiny models run in milliseconds, but XLA's LLVM backend spends seconds optimising each one: at
level 0 the suite's cold run (an empty compilation cache, as on a fresh machine) took 6 min 53 s
instead of 9 min 31 s here. The HLO passes are the same at every level, so the tests check the
same operations; only the machine code differs, which can move a transcendental function's
result by an ulp (the tests' tolerances allow for float32 rounding, not for one code path).
"""

TEST_XLA_FLAGS = "--xla_backend_optimization_level=0"
