"""The prepared GPU measurement (scripts/gpu_bench.sh, prs_jax/tools/gpu_bench.py): its batch
search, its table, and the whole path run on this CPU with tiny models (--dry_run)."""

import importlib.util
import json
import os
import pathlib
import subprocess
import sys

import pytest

from prs_jax.tools import gpu_bench

SCRIPT = pathlib.Path(__file__).resolve().parents[1] / "scripts" / "gpu_bench.sh"


def fits_below(limit, seen):
    def fits(batch):
        seen.append(batch)
        return batch <= limit

    return fits


def test_the_batch_doubles_until_the_device_runs_out_of_memory():
    seen = []
    search = gpu_bench.largest_batch(fits_below(700, seen), start=64, max_batch=8192)
    assert search.batch == 512 and search.stopped_by == "out of memory"
    assert seen == [64, 128, 256, 512, 1024]


def test_a_start_that_does_not_fit_is_halved():
    search = gpu_bench.largest_batch(fits_below(100, []), start=256, max_batch=8192)
    assert search.batch == 64 and search.stopped_by == "out of memory"
    assert search.tried[:3] == [(256, "out of memory"), (128, "out of memory"), (64, "fits")]


def test_max_batch_and_the_time_budget_end_the_doubling():
    search = gpu_bench.largest_batch(fits_below(10**6, []), start=64, max_batch=256)
    assert (search.batch, search.stopped_by) == (256, "max_batch")
    search = gpu_bench.largest_batch(fits_below(10**6, []), 64, 8192, time_left=lambda: 0.0)
    assert (search.batch, search.stopped_by) == (128, "time budget")


def test_nothing_fits():
    with pytest.raises(RuntimeError, match="not even 1 image per device fits"):
        gpu_bench.largest_batch(fits_below(0, []), start=4, max_batch=64)


def test_out_of_memory_errors_of_jax_and_torch_are_recognised():
    assert gpu_bench.is_out_of_memory(RuntimeError("RESOURCE_EXHAUSTED: Out of memory while"))
    assert gpu_bench.is_out_of_memory(type("OutOfMemoryError", (RuntimeError,), {})("CUDA"))
    assert not gpu_bench.is_out_of_memory(ValueError("shapes do not match"))


def test_the_table_gives_throughput_mfu_phase_ratio_and_timm():
    ours = {
        "num_devices": 1,
        "per_device_batch": 512,
        "batch_search": {"stopped_by": "out of memory"},
        "images_per_s": {"attention": 4000.0, "conv": 5000.0},
        "seconds_per_step": {"attention": 0.128, "conv": 0.1024},
        "flops_per_image": 100e9,
    }
    timm = {"images_per_s": 2000.0, "per_device_batch": 256}
    rows = gpu_bench.table({"ConViT-S": {"ours": ours, "timm": timm}}, peak_tflops=1000).split("\n")
    assert rows[2] == (
        "| ConViT-S | 512 (out of memory) | 4000 | 5000 | 0.80 | 100.00 | 40.0% | 2000 (256)"
        " | 2.00x |"
    )


@pytest.mark.slow  # worker processes compile small train steps; -m "not slow" skips it
def test_the_script_runs_end_to_end_on_the_cpu_with_tiny_models(tmp_path):
    output = tmp_path / "gpu_bench.json"
    vs_timm = all(importlib.util.find_spec(m) for m in ("torch", "timm"))
    command = [str(SCRIPT), "--dry_run", f"--output={output}", "--peak_tflops=1"]
    command += ["--vs-timm"] if vs_timm else []
    done = subprocess.run(
        command,
        capture_output=True,
        text=True,
        env={**os.environ, "PYTHON": sys.executable},
        check=False,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert "| ConViT-Ti, 32 px | 4 (max_batch) |" in done.stdout
    record = json.loads(output.read_text())
    assert record["dry_run"] and record["table"] in done.stdout
    for name in ("ConViT-Ti, 32 px", "ConViT-S, 224 px"):
        ours = record["results"][name]["ours"]
        assert ours["per_device_batch"] == 4
        assert ours["batch_search"]["tried"] == [[2, "fits"], [4, "fits"]]
        assert set(ours["images_per_s"]) == {"attention", "conv"}
        assert ours["flops_per_image"] > 0
        if vs_timm:
            assert record["results"][name]["timm"]["per_device_batch"] == 4
