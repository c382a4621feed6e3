"""The benchmark's bookkeeping on a tiny config: one compilation over a run visiting every layer
switch, the two phases it times, XLA's FLOP count, timm's arguments. No timing is asserted."""

import platform
import re
import subprocess
import sys
import threading

import numpy as np
import pytest
from PIL import Image

from prs_jax import bench
from prs_jax.tools import step_bench, timing, timm_bench
from prs_jax.training import config_lib
from prs_jax.training.state import create_model

NUM_CLASSES = 10


@pytest.fixture(scope="module")
def setup():
    config = config_lib.base_config()
    config.model.update(patch_size=4, hidden_size=16, num_heads=4, depth=3, num_gpsa_layers=2)
    config.data.image_size = 16
    config.batch_size, config.eval_batch_size = 8, 8
    config.num_epochs, config.optimizer.warmup_epochs = 4.0, 1.0
    config_lib.set_schedule(config, "prs")  # layer 0 switches at epoch 2, layer 1 at epoch 2/3
    model = create_model(config, NUM_CLASSES)
    # 5 steps per epoch, 20 in all.
    return config, step_bench.build_step(config, model, NUM_CLASSES, train_examples=40)


def test_one_compilation_serves_a_run_that_visits_every_layer_switch(setup):
    _, step_setup = setup
    with timing.compile_events("train_step") as compiles:
        visited = step_bench.run_across_switches(step_setup)
    assert visited == [0, 4, 10, 19]  # start, the two switches (epochs 2/3 and 2), the last step
    # One executable (JAX reports a load from tests/conftest.py's persistent cache as one too).
    assert compiles["count"] == 1
    with timing.compile_events("train_step") as again:
        step_bench.run_across_switches(step_setup)
    assert again["count"] == 0


def test_phases_are_all_convolution_then_all_self_attention(setup):
    _, step_setup = setup
    phases = step_bench.phase_steps(step_setup)
    assert phases == {"conv": 0, "attention": 10}
    np.testing.assert_array_equal(step_setup.conv_strength_fn(phases["conv"]), [1.0, 1.0])
    np.testing.assert_array_equal(step_setup.conv_strength_fn(phases["attention"]), [0.0, 0.0])


def test_flop_count_covers_forward_and_backward(setup):
    config, step_setup = setup
    train_flops, _ = step_bench.cost_and_memory(step_setup)
    eval_flops = step_bench.eval_flops(step_setup)
    per_image_train = train_flops / config.batch_size
    per_image_eval = eval_flops / config.eval_batch_size
    # A train step is a forward and a backward pass (about 3 forward passes at full size; this
    # tiny model's softmaxes and optimizer update weigh more).
    assert per_image_eval > 0 and 1.5 < per_image_train / per_image_eval < 4.5


def folder_config(config, root, num_images=10):
    """`config` reading ROOT/train/<class i>/0.png, one random 16x16 image per class."""
    rng = np.random.default_rng(0)
    for i in range(num_images):
        (root / "train" / f"c{i}").mkdir(parents=True)
        pixels = rng.integers(0, 256, (16, 16, 3), dtype=np.uint8)
        Image.fromarray(pixels).save(root / "train" / f"c{i}" / "0.png")
    config = config.copy_and_resolve_references()
    config.data.update(name="image_folder", folder_root=str(root), randaugment_num_ops=0)
    return config


def test_end_to_end_feeds_the_step_from_the_configured_folder_and_stops_its_threads(
    setup, tmp_path
):
    config, step_setup = setup
    config = folder_config(config, tmp_path)
    reading, source = step_bench.input_data(config)
    assert source == "ImageFolderSource(10 images, 10 classes, decoded in memory)"
    with reading:
        run = step_bench.end_to_end_runner(step_setup, config, step=3, num_steps=2)
        assert run() > 0
    # Warm-up and timed steps all ran on the iterator's batches, from step 3.
    assert int(step_setup.state.step) == 3 + step_bench.INPUT_WARMUP + 2
    assert not [t for t in threading.enumerate() if t.name.startswith("grain")]


def test_timing_summary_is_median_min_max_of_images_per_second():
    summary = timing.Timing("x", images_per_step=100, seconds=[1.0, 2.0, 0.5])
    assert summary.images_per_s() == (100.0, 50.0, 200.0)


def test_timm_arguments_match_our_convit_tiny():
    config = config_lib.base_config()
    name, kwargs = timm_bench.timm_kwargs(config, 100)
    assert name == "convit_tiny"
    assert kwargs["embed_dim"] * kwargs["num_heads"] == 192  # timm multiplies by the heads
    assert kwargs["local_up_to_layer"] == 10 and kwargs["depth"] == 12
    assert kwargs["img_size"] == 32 and kwargs["patch_size"] == 4 and kwargs["num_classes"] == 100
    assert kwargs["drop_path_rate"] == config.model.drop_path_rate


def test_timm_profile_counts_each_matmul_once_and_splits_off_the_elementwise_work():
    """A two-layer MLP's train step, whose matmul FLOPs are known: forward x W1 and h W2,
    backward the two weight gradients and the gradient into h (the input needs none). A profile
    that counted aten::matmul or aten::linear beside the aten::mm they call would double it."""
    torch = pytest.importorskip("torch")
    batch, inputs, hidden, outputs = 64, 32, 48, 16
    torch.manual_seed(0)
    model = torch.nn.Sequential(
        torch.nn.Linear(inputs, hidden), torch.nn.GELU(), torch.nn.Linear(hidden, outputs)
    )
    x = torch.randn(batch, inputs)

    def step():
        model.zero_grad()
        model(x).square().mean().backward()

    profile = timm_bench.profile_timm_step(step, num_steps=3)
    products = batch * (inputs * hidden + hidden * outputs)
    expected = 2 * (2 * products + batch * hidden * outputs)
    # torch's addmm formula also counts the bias add: under 1% here.
    assert profile.matmul_flops == pytest.approx(expected, rel=0.01)
    assert profile.matmul_s > 0
    assert {"aten::gelu", "aten::gelu_backward"} <= set(profile.other_s)
    assert not set(profile.other_s) & set(timm_bench.TORCH_MATMUL_OPS)
    # Own times never overlap, so together they fit in the wall time.
    assert profile.matmul_s + sum(profile.other_s.values()) <= profile.wall_s * 1.05


def test_torch_matmul_rate_is_flops_over_the_best_time(monkeypatch):
    pytest.importorskip("torch")
    # A clock whose successive timed matmuls take 0.5, 0.25 and 1 s: the best is 0.25 s.
    ticks = iter([0.0, 0.5, 10.0, 10.25, 20.0, 21.0])
    monkeypatch.setattr(timm_bench.time, "perf_counter", lambda: next(ticks))
    rate, note = timm_bench.torch_matmul_rate(64, repeats=3)
    assert rate == pytest.approx(2 * 64**3 / 0.25) and "threads" in note


def test_the_contenders_are_alternated_round_by_round():
    calls = []
    contenders = {
        "a": lambda: calls.append("a") or 1.0,
        "b": lambda: calls.append("b") or 2.0,
    }
    seconds, faults = timing.race(contenders, repeats=3, settle_s=0.0)
    assert calls == ["a", "b"] * 3
    assert seconds == {"a": [1.0] * 3, "b": [2.0] * 3}
    assert set(faults) == {"a", "b"} and len(faults["a"]) == 3


REUSE_PROBE = """
import ctypes, resource, sys
from prs_jax.cpu import host_allocator
applied = host_allocator.reuse_freed_memory() if sys.argv[1] == "reuse" else False
libc = ctypes.CDLL("libc.so.6")
libc.malloc.restype = ctypes.c_void_p
libc.free.argtypes = [ctypes.c_void_p]
size = 256 * 2**20
faults = []
for _ in range(3):
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    block = libc.malloc(size)
    ctypes.memset(block, 1, size)  # touch every page, as XLA's scratch block is
    libc.free(block)
    faults.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
print(applied, faults[-1])
"""


@pytest.mark.skipif(
    platform.system() != "Linux" or platform.libc_ver()[0] != "glibc", reason="glibc only"
)
def test_reused_host_memory_is_not_faulted_in_again():
    """A freed 256 MiB block comes back without page faults (XLA:CPU's per-step scratch)."""

    def probe(mode):
        out = subprocess.run(
            [sys.executable, "-c", REUSE_PROBE, mode], check=True, capture_output=True, text=True
        ).stdout.split()
        return out[0] == "True", int(out[1])

    applied, faults = probe("reuse")
    _, default_faults = probe("default")
    assert applied
    assert faults < 1000 < default_faults  # 256 MiB is 65536 pages of 4 KiB


@pytest.mark.slow  # a long end-to-end run; -m 'not slow' skips it
def test_the_command_line_reports_one_compilation_and_both_phases(tmp_path):
    """`python -m prs_jax.bench` end to end on the digits config (local data, a tiny model)."""
    command = [
        sys.executable,
        "-m",
        "prs_jax.bench",
        "--config",
        "configs/digits.py",
        # The report's lines, not the model's size, are under test: a 2-block model compiles
        # in a fraction of the time (the bench compiles afresh: it turns the cache off).
        "--config.model.hidden_size=16",
        "--config.model.depth=2",
        "--config.model.num_gpsa_layers=1",
        "--repeats",
        "1",
        "--steps",
        "1",
        "--input_batches",
        "2",
        "--end_to_end_steps",
        "1",
        "--matmul_size",
        "128",
        "--profile",
        "--profile_dir",
        str(tmp_path),
    ]
    report = subprocess.run(
        command,
        check=True,
        capture_output=True,
        text=True,
        cwd=bench.pathlib.Path(bench.__file__).parents[1],
    ).stdout
    assert "freed host memory reused: True" in report or platform.libc_ver()[0] != "glibc"
    compilations = [line for line in report.splitlines() if "compilations of the train" in line]
    assert len(compilations) == 1 and compilations[0].endswith(": 1")
    flops = re.search(r"train step ([0-9.]+) GFLOP, eval ([0-9.]+) GFLOP", report)
    assert float(flops[1]) > float(flops[2]) > 0  # forward and backward > forward
    for line in (
        "ours, attention phase",
        "ours, conv phase",
        "baseline (straightforward Flax)",
        "conv phase / self-attention phase step time:",
        "input pipeline: digits (local), 0 workers",
    ):
        assert line in report
    # The train iterator alone, and feeding the step as train.py does, beside the step alone.
    assert re.search(r"^  input pipeline alone +[\d.]+ img/s", report, re.MULTILINE), report
    for phase in ("attention", "conv"):
        line = rf"^  end to end, {phase} phase +[\d.]+ img/s .* (\d+)% of the step alone \["
        assert (found := re.search(line, report, re.MULTILINE)) and int(found[1]) > 0, report
    # --profile: each phase's device time by kind, and its trace kept for XProf.
    for phase in ("attention", "conv"):
        section = report.split(f"profile, {phase} phase")[1]
        shares = re.findall(
            r"^  (?:matmuls|other|collectives).* ms +(\d+)%", section, re.MULTILINE
        )[:3]
        assert len(shares) == 3 and abs(sum(map(int, shares)) - 100) <= 2, section
        assert "GFLOP/s" in section.splitlines()[2]
        assert re.search(
            r"ms = \d+% of the matmul rate; with every matmul at that rate: "
            r"[\d.]+ ms = \d+%",
            section.splitlines()[1],
        ), section
    assert len(list(tmp_path.rglob("*.xplane.pb"))) == 2
