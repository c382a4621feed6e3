"""The benchmark's device-time breakdown: HLO parsing, attribution, and a real trace."""

import pathlib

import jax
import jax.numpy as jnp
import pytest

from prs_jax.tools import op_profile

HLO = """\
HloModule jit_step, is_scheduled=true

%fused_dot (param_0: f32[64,48], param_1: f32[48,32]) -> f32[64,32] {
  %param_0 = f32[64,48]{1,0} parameter(0)
  %param_1 = f32[48,32]{1,0} parameter(1)
  ROOT %dot.1 = f32[64,32]{1,0} dot(%param_0, %param_1), lhs_contracting_dims={1}, rhs_contracting_dims={0}, metadata={op_name="jit(step)/jvp(Model)/blocks_3/mlp/fc1/dot_general"}
}

%fused_add (param_0.1: f32[64,32]) -> f32[64,32] {
  %param_0.1 = f32[64,32]{1,0} parameter(0)
  ROOT %add.2 = f32[64,32]{1,0} add(%param_0.1, %param_0.1)
}

ENTRY %main (x: f32[64,48], w: f32[48,32], a: f32[8,4,16,16], b: f32[8,4,16,5]) -> f32[64,32] {
  %x = f32[64,48]{1,0} parameter(0)
  %w = f32[48,32]{1,0} parameter(1)
  %a = f32[8,4,16,16]{3,2,1,0} parameter(2)
  %b = f32[8,4,16,5]{3,2,1,0} parameter(3)
  %ynn_fusion = f32[64,32]{1,0} fusion(%x, %w), kind=kCustom, calls=%fused_dot, metadata={op_name="jit(step)/jvp(Model)/blocks_3/mlp/fc1/dot_general"}
  %dot.7 = f32[8,4,16,5]{3,2,1,0} dot(f32[8,4,16,16]{3,2,1,0} %a, f32[8,4,16,5]{3,2,1,0} %b), lhs_batch_dims={0,1}, lhs_contracting_dims={2}, rhs_batch_dims={0,1}, rhs_contracting_dims={2}, metadata={op_name="jit(step)/transpose(jvp(Model))/blocks_7/attn/cond/branch_0_fun/bhnm,bhmd->bhnd/transpose"}
  %add_fusion.3 = f32[64,32]{1,0} fusion(%ynn_fusion), kind=kLoop, calls=%fused_add, metadata={op_name="jit(step)/transpose(jvp(Model))/blocks_7/norm1/reduce_sum"}
  %add_fusion.4 = f32[64,32]{1,0} fusion(%ynn_fusion), kind=kLoop, calls=%fused_add, metadata={op_name="jit(step)/transpose(jvp(Model))/blocks_3/norm1/reduce_sum"}
  %all-reduce.5 = (f32[64,32]{1,0}, f32[4]{0}) all-reduce(%add_fusion.3, %add_fusion.4), channel_id=1, to_apply=%fused_add
  ROOT %copy.6 = f32[64,32]{1,0} copy(%add_fusion.4)
}
"""


def test_dots_are_counted_in_fusions_and_with_batch_dimensions():
    instructions = op_profile.parse_hlo(HLO)
    fused = instructions["ynn_fusion"]
    assert (fused.kind, fused.flops) == ("matmul", 2 * 64 * 32 * 48)
    # A batched dot contracting a non-minor dimension: 2 x output elements x 16.
    assert instructions["dot.7"].kind == "matmul"
    assert instructions["dot.7"].flops == 2 * (8 * 4 * 16 * 5) * 16
    assert instructions["all-reduce.5"].kind == "collective"
    assert instructions["add_fusion.3"] == op_profile.Instruction(
        "other", 0.0, "jit(step)/transpose(jvp(Model))/blocks_7/norm1/reduce_sum"
    )
    assert instructions["copy.6"].kind == "other"


GPU_AND_CONV_HLO = """\
ENTRY %main (x: f32[64,48], w: f32[48,32], images: f32[8,32,32,3], k: f32[3,3,1,6]) -> f32[64,32] {
  %x = f32[64,48]{1,0} parameter(0)
  %w = f32[48,32]{1,0} parameter(1)
  %images = f32[8,32,32,3]{3,2,1,0} parameter(2)
  %k = f32[3,3,1,6]{3,2,1,0} parameter(3)
  %custom-call.1 = (f32[64,32]{1,0}, s8[4194304]{0}) custom-call(f32[64,48]{1,0} %x, f32[48,32]{1,0} %w), custom_call_target="__cublas$gemm", backend_config={"gemm_backend_config":{"alpha_real":1,"dot_dimension_numbers":{"lhs_contracting_dimensions":["1"],"rhs_contracting_dimensions":["0"],"lhs_batch_dimensions":[],"rhs_batch_dimensions":[]}}}
  %convolution.2 = f32[8,16,16,6]{3,2,1,0} convolution(%images, %k), window={size=3x3 stride=2x2 pad=0_1x0_1}, dim_labels=b01f_01io->b01f, feature_group_count=3
  ROOT %get-tuple-element.3 = f32[64,32]{1,0} get-tuple-element(%custom-call.1), index=0
}
"""


def test_gpu_gemm_custom_calls_and_grouped_convolutions_count_as_matmuls():
    instructions = op_profile.parse_hlo(GPU_AND_CONV_HLO)
    assert instructions["custom-call.1"].kind == "matmul"
    assert instructions["custom-call.1"].flops == 2 * 64 * 32 * 48
    # Grouped: each output sums a 3 x 3 window of one input feature (3 groups, 6 outputs).
    assert instructions["convolution.2"].flops == 2 * (8 * 16 * 16 * 6) * 3 * 3 * 1
    assert instructions["get-tuple-element.3"].kind == "other"


def test_the_compiled_module_of_a_convolution_has_its_flops():
    conv = jax.jit(
        lambda x, w: jax.lax.conv_general_dilated(
            x, w, (1, 1), "SAME", dimension_numbers=("NHWC", "HWIO", "NHWC")
        )
    )
    x, w = jnp.ones((4, 16, 16, 3)), jnp.ones((3, 3, 3, 8))
    instructions = op_profile.parse_hlo(conv.lower(x, w).compile().as_text())
    # The convolution (and any fusion wrapping it) carries exactly its FLOPs.
    flops = {i.flops for i in instructions.values() if i.kind == "matmul"}
    assert flops == {2 * (4 * 16 * 16 * 8) * (3 * 3 * 3)}


def test_module_paths_merge_blocks_and_tell_the_backward_pass_apart():
    path = op_profile.module_path
    assert path("jit(step)/jvp(Model)/blocks_3/mlp/fc1/dot_general") == (
        "fwd Model/blocks_N/mlp/fc1/dot_general"
    )
    assert path("jit(step)/transpose(jvp(Model))/blocks_7/attn/cond/branch_0_fun/mul") == (
        "bwd Model/blocks_N/attn/cond/mul"
    )
    assert path("jit(step)/transpose(jvp(Model))/blocks_7/Dropout_0/div;jit(step)/add") == (
        "bwd Model/blocks_N/Dropout_N/div"
    )
    assert path("") == "fwd (no metadata)"


def test_times_are_averaged_per_step_and_device_and_split_by_kind():
    instructions = op_profile.parse_hlo(HLO)
    ms = 1e-3
    events = [
        ("ynn_fusion", 8 * ms),
        ("end: ynn_fusion", 0.0),
        ("ThunkExecutor::Execute", 40 * ms),  # encloses the others: not counted
        ("dot.7", 4 * ms),
        ("add_fusion.3", 2 * ms),
        ("add_fusion.4", 6 * ms),
        ("all-reduce.5", 1 * ms),
        ("Rendezvous", 3 * ms),
        ("copy.6", 4 * ms),
        ("mystery.9", 2 * ms),
    ]
    breakdown = op_profile.attribute(events, instructions, num_steps=2, num_devices=1)
    assert breakdown.seconds_by_kind == pytest.approx(
        {"matmul": 6 * ms, "other": 6 * ms, "collective": 2 * ms}
    )
    assert breakdown.unmatched_seconds == pytest.approx(1 * ms)
    assert breakdown.matmul_flops == pytest.approx((2 * 64 * 32 * 48 + 2 * 8 * 4 * 16 * 5 * 16) / 2)
    # blocks_3 and blocks_7 are one row; the largest row first.
    norm = ("bwd Model/blocks_N/norm1/reduce_sum", pytest.approx(4 * ms))
    assert breakdown.other_by_path[0] == norm
    per_device = op_profile.attribute(events, instructions, num_steps=1, num_devices=2)
    assert per_device.total_seconds == pytest.approx(breakdown.total_seconds)
    # The matmuls' 6 ms at the yardstick's rate would take flops / rate; the other 8 ms stay.
    flops = breakdown.matmul_flops
    assert breakdown.seconds_with_matmuls_at(flops / (1 * ms)) == pytest.approx(9 * ms)
    text = op_profile.report(
        breakdown, yardstick_per_device=flops / (1 * ms), model_flops_per_device=2 * flops
    )
    assert "matmuls and convolutions" in text and "bwd Model/blocks_N/norm1/reduce_sum" in text
    # Twice the matmul FLOPs, which the yardstick does in 2 ms, took 14 ms: 2/14 of its rate;
    # with the matmuls at the yardstick's rate, 2/9 of it.
    assert "= 14% of the matmul rate; with every matmul at that rate: 9.0 ms = 22%" in text


def test_a_real_trace_attributes_the_matmul_flops_of_each_step(tmp_path):
    step = jax.jit(lambda x, w: jnp.tanh(x @ w) * 2.0)
    x, w = jnp.ones((256, 512)), jnp.ones((512, 128))
    step(x, w).block_until_ready()
    with jax.profiler.trace(str(tmp_path)):
        for _ in range(3):
            step(x, w).block_until_ready()
    trace = max(pathlib.Path(tmp_path).rglob("*.xplane.pb"))
    profile = jax.profiler.ProfileData.from_file(str(trace))
    instructions = op_profile.parse_hlo(step.lower(x, w).compile().as_text())
    breakdown = op_profile.attribute(
        op_profile.operation_events(profile), instructions, num_steps=3, num_devices=1
    )
    assert breakdown.matmul_flops == pytest.approx(2 * 256 * 512 * 128)
    assert breakdown.seconds_by_kind["matmul"] > 0
    assert breakdown.seconds_by_kind["other"] > 0  # the tanh and the scaling
    assert breakdown.unmatched_seconds == 0
