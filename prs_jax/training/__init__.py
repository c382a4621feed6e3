"""A training run: config -> checked config -> state -> jitted steps -> the loop, with its
checkpoints and metrics. Each module imports only those above it:

  config_lib.py     the base config, variants and model fields shared by configs/*.py
  validation.py     every config and workdir error, found before anything compiles
  state.py          TrainState, the model factory, the device mesh, initialisation
  steps.py          the train and eval steps, jitted over the mesh (`build_run_functions`)
  checkpointing.py  orbax checkpoints of the state, the data iterator and the config
  metrics.py        clu writers (TensorBoard, metrics.jsonl) and reading them back
  completion.py     finished.json: the step and config a run finished with
  workdir_lock.py   one run per workdir: the lock a run holds on it
  run_summary.py    the lines a run ends with: accuracy, speed, what it wrote, what to run next
  train.py          train_and_evaluate(config, workdir): the loop, top to bottom
"""
