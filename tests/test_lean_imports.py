"""The benchmark, evaluation, models, data and steps import without TensorFlow (or TFDS, clu,
torch, scikit-learn, matplotlib): a GPU image with JAX, flax, optax and orbax needs only the
small dependencies (ml_collections, grain and its own, pillow, safetensors) to run
`python -m prs_jax.bench` and `prs_jax.evaluate`.

Checked in a fresh interpreter, since this test process has imported much more. There the heavy
packages cannot be imported at all, so a module that imports one fails here even if it is
installed; and none of them may be in sys.modules afterwards.
"""

import subprocess
import sys

HEAVY = ("tensorflow", "tensorflow_datasets", "clu", "torch", "sklearn", "matplotlib")
LEAN = (
    "prs_jax.bench",
    "prs_jax.evaluate",
    "prs_jax.models",
    "prs_jax.data",
    "prs_jax.training.steps",
    "prs_jax.training.state",
    "prs_jax.analysis.spectra",
    "prs_jax.tools.step_bench",
    "prs_jax.tools.precision",
    "prs_jax.tools.gpu_bench",
)

PROBE = """
import importlib, importlib.abc, sys

HEAVY = {heavy!r}

class Absent(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in HEAVY:
            raise ModuleNotFoundError(f"No module named {{name!r}} (absent for this test)")
        return None

sys.meta_path.insert(0, Absent())
for module in {lean!r}:
    importlib.import_module(module)
print(sorted({{m.split(".")[0] for m in sys.modules}} & set(HEAVY)))
"""


def test_the_benchmark_and_evaluation_import_without_tensorflow():
    result = subprocess.run(
        [sys.executable, "-c", PROBE.format(heavy=HEAVY, lean=LEAN)],
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.strip() == "[]"


def test_the_commands_that_read_runs_import_without_tensorflow():
    """report and fourier read metrics.jsonl (prs_jax.training.metrics_file), not the writers
    that pull in clu and TensorFlow; they draw with matplotlib, which they may import."""
    heavy = tuple(m for m in HEAVY if m != "matplotlib")
    result = subprocess.run(
        [
            sys.executable,
            "-c",
            PROBE.format(heavy=heavy, lean=("prs_jax.report", "prs_jax.fourier")),
        ],
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.strip() == "[]"
