"""The steps lower for the accelerators prs_jax is written for: `jax.export` on this CPU host.

`jax.export` traces a jitted function and lowers it to StableHLO for the platforms named, here
`cuda` and `tpu`, with no such device present; it compiles no executable, so each export takes
a second or two. Exported: the train step, the eval step and the Fourier spectra step of
configs/cifar100.py for PRS (ConViT), DeiT and ResNet-18, in float32 and bfloat16, jitted with
the shardings, donation and schedule that a run uses (training.steps.build_run_functions; the
spectra step as training.train jits it).

Sizes: the configs' `runlocal` variants (batch 32, eval batch 64; the ViTs 4 blocks of width 64,
PRS with 2 GPSA layers; ResNet-18 as it is). A ViT block lowers to the same operations at any
width and depth, so the full ConViT-Ti is exported once, for the train step on an 8-device
mesh (test_the_full_convit_tiny_step_exports_for_an_eight_device_slice).

What jax.export supports here (JAX 0.10, Shardy): a function jitted over a multi-device mesh
exports with its shardings, for `nr_devices` devices; the mesh may be the host's own devices or
an AbstractMesh of any size, so a program for an 8-chip TPU or an 8-GPU host lowers on a 2-core
CPU. Not supported: `Exported.serialize()` of these steps, whose state holds optax's
NamedTuple states, unless each is registered (export.register_namedtuple_serialization); the
StableHLO itself (`mlir_module_serialized`) needs no registration.
"""

import functools
import importlib.util
import pathlib
import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax import export
from jax.sharding import AbstractMesh, AxisType, NamedSharding
from jax.sharding import PartitionSpec as P

from prs_jax.analysis import spectra
from prs_jax.method import schedule
from prs_jax.training.state import create_mesh, create_model
from prs_jax.training.steps import build_run_functions

PLATFORMS = ("cuda", "tpu")
CONFIG = pathlib.Path(__file__).resolve().parents[1] / "configs" / "cifar100.py"
NUM_CLASSES, TRAIN_EXAMPLES = 100, 50_000
VARIANTS = ("prs", "deit", "resnet18")
DTYPES = ("float32", "bfloat16")
# Names of the two branches of GPSA's conv-phase lax.cond (models/gpsa.py, gpsa_attention):
# the exported module's locations name the Python functions that each operation came from.
GPSA_BRANCHES = ("_positional_values", "_mixed_values")


def get_config(arg):
    spec = importlib.util.spec_from_file_location("cifar100_config", CONFIG)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.get_config(arg)


def one_device_mesh():
    """One device, as on a single GPU: the same jit and shardings as a run, nr_devices 1."""
    devices = jax.devices()[:1]
    return jax.make_mesh((1,), ("data",), axis_types=(AxisType.Auto,), devices=devices)


def batch_of(size, image_size, sharding, with_mask):
    batch = {
        "image": jax.ShapeDtypeStruct(
            (size, image_size, image_size, 3), jnp.float32, sharding=sharding
        ),
        "label": jax.ShapeDtypeStruct((size,), jnp.int32, sharding=sharding),
    }
    if with_mask:
        batch["mask"] = jax.ShapeDtypeStruct((size,), jnp.bool_, sharding=sharding)
    return batch


@functools.cache
def step_functions(arg, dtype, mesh):
    """{name: (jitted function, its abstract arguments)} for the train, eval and spectra steps
    of cifar100.py:`arg` in `dtype`, jitted over `mesh` as a run jits them."""
    config = get_config(arg)
    config.model.dtype = dtype
    model = create_model(config, NUM_CLASSES)
    steps = schedule.training_steps(
        TRAIN_EXAMPLES, config.batch_size, config.num_epochs, config.optimizer.warmup_epochs
    )
    run = build_run_functions(config, model, NUM_CLASSES, steps, mesh)
    data, replicated = NamedSharding(mesh, P("data")), NamedSharding(mesh, P())
    spectra_step = jax.jit(
        spectra.make_spectra_step(model, run.conv_strength_fn),
        in_shardings=(replicated, data),
        out_shardings=replicated,
    )
    state = jax.eval_shape(run.init)
    size = config.data.image_size
    train_batch = batch_of(config.batch_size, size, data, with_mask=False)
    eval_batch = batch_of(config.eval_batch_size, size, data, with_mask=True)
    return (
        model,
        run,
        {
            "train": (run.train_step, (state, train_batch)),
            "eval": (run.eval_step, (state, eval_batch)),
            "spectra": (spectra_step, (state, eval_batch)),
        },
    )


def export_step(arg, dtype, name, mesh):
    model, run, functions = step_functions(arg, dtype, mesh)
    function, args = functions[name]
    return model, run, export.export(function, platforms=PLATFORMS)(*args)


def float_dtypes(avals):
    return {str(a.dtype) for a in jax.tree.leaves(avals) if jnp.issubdtype(a.dtype, jnp.floating)}


@pytest.mark.parametrize("name", ["train", "eval", "spectra"])
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("variant", VARIANTS)
def test_each_step_lowers_for_cuda_and_tpu(variant, dtype, name):
    model, _, exported = export_step(f"{variant},runlocal", dtype, name, one_device_mesh())
    assert exported.platforms == PLATFORMS
    assert exported.nr_devices == 1
    text = exported.mlir_module()
    # bfloat16 compute: matmuls (ViTs) or convolutions (ResNet) take bf16 operands; float32
    # compute has no bf16 anywhere.
    bf16_ops = re.findall(r"stablehlo\.(?:dot_general|convolution)[^\n]*bf16", text)
    assert bool(bf16_ops) == (dtype == "bfloat16")
    # Whatever the compute dtype, what a step returns is float32: parameters, optimizer state,
    # loss and metrics, accuracy sums, spectra.
    assert float_dtypes(exported.out_avals) == {"float32"}
    # PRS: the conv-phase lax.cond is in the module with both branches, so one exported step
    # serves both sides of every layer switch (the step counter is an input, not a constant).
    has_gpsa = model.num_gpsa_layers > 0
    assert has_gpsa == (variant == "prs")
    assert all((branch in text) == has_gpsa for branch in GPSA_BRANCHES)


def test_the_prs_step_takes_the_step_counter_as_an_input_across_its_switches():
    mesh = one_device_mesh()
    _, run, exported = export_step("prs,runlocal", "float32", "train", mesh)
    state, _ = jax.tree.unflatten(exported.in_tree, exported.in_avals)[0]
    assert state.step.shape == () and state.step.dtype == jnp.int32
    # The runlocal schedule switches its 2 GPSA layers at different steps inside the run.
    config = get_config("prs,runlocal")
    total = schedule.training_steps(
        TRAIN_EXAMPLES, config.batch_size, config.num_epochs, config.optimizer.warmup_epochs
    ).total_steps
    switches = schedule.layer_switch_steps(run.conv_strength_fn, total, 2)
    assert len(set(switches)) == 2 and all(0 < s < total for s in switches)
    assert np.all(np.asarray(run.conv_strength_fn(0)) == 1.0)
    assert np.all(np.asarray(run.conv_strength_fn(total - 1)) == 0.0)


def shardings_of(exported, mesh):
    """(input shardings, output shardings) as PartitionSpecs, in the arguments' tree."""
    inputs = jax.tree.unflatten(exported.in_tree, exported.in_shardings_jax(mesh))[0]
    outputs = jax.tree.unflatten(exported.out_tree, exported.out_shardings_jax(mesh))
    return jax.tree.map(lambda s: s.spec, inputs), jax.tree.map(lambda s: s.spec, outputs)


@pytest.mark.parametrize("name", ["train", "eval", "spectra"])
def test_the_data_parallel_steps_export_with_their_shardings(name):
    # The test process's 2 CPU devices, on the mesh a run builds (training.state.create_mesh).
    mesh = create_mesh()
    assert mesh.devices.size == 2
    _, _, exported = export_step("prs,runlocal", "bfloat16", name, mesh)
    assert exported.platforms == PLATFORMS
    assert exported.nr_devices == 2
    (state, batch), outputs = shardings_of(exported, mesh)
    assert all(spec == P("data") for spec in jax.tree.leaves(batch))
    assert all(spec == P() for spec in jax.tree.leaves((state, outputs)))
    text = exported.mlir_module()
    assert re.search(r'sdy\.mesh @mesh = <\["data"=2\]>', text)
    # The train step donates the state: its buffers become the new state's.
    assert ("tf.aliasing_output" in text) == (name == "train")


def test_the_full_convit_tiny_step_exports_for_an_eight_device_slice():
    # An abstract mesh needs no devices: the program for a TPU v3-8 / v4-8 or an 8-GPU host,
    # ConViT-Ti at its real size (12 blocks, 10 GPSA), batch 128 split 16 per device.
    mesh = AbstractMesh((8,), ("data",), axis_types=(AxisType.Auto,))
    model, _, exported = export_step("prs", "bfloat16", "train", mesh)
    assert (model.depth, model.num_gpsa_layers) == (12, 10)
    assert exported.platforms == PLATFORMS
    assert exported.nr_devices == 8
    text = exported.mlir_module()
    assert re.search(r'sdy\.mesh @mesh = <\["data"=8\]>', text)
    assert all(branch in text for branch in GPSA_BRANCHES)
