"""What the commands prs_jax.bench and prs_jax.sweep drive, above the training run:

timing.py      per-step timings raced round by round; compile events
step_bench.py  our train step built as the loop builds it, a matmul yardstick, the input
               pipeline alone and end to end
timm_bench.py  timm's model of the same configuration, with the same recipe (--vs-timm)
op_profile.py  where a step's device time goes, from a profiler trace
"""
