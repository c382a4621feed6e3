"""Where a compiled step's device time goes: matmuls, collectives and everything else.

`python -m prs_jax.bench --profile` traces a few train steps with `jax.profiler` and reads the
trace back (`jax.profiler.ProfileData`). Each traced operation is matched by name to an
instruction of the compiled HLO module, and sorted into

  - matmuls: instructions (fusions included) that contain a dot, a convolution or a GEMM
    custom-call (cuBLAS on GPUs), with their FLOPs, so that their own FLOP rate can be
    compared with the matmul yardstick;
  - collectives: all-reduce and the like, plus the time devices spend waiting for each other
    at them (the CPU runtime's "Rendezvous" / "Wait" events);
  - other: elementwise fusions, reductions, copies and transposes (memory-bound on CPU).

Operations are also summed by the model path in their metadata (blocks_3 and blocks_7 both
count as blocks_N), forward and backward apart, so the largest non-matmul costs can be read
off by module. XProf/TensorBoard show the same trace op by op; this is the summary that the
performance work of issue 8 needed, printed next to the benchmark's figures.

The operation lines are the CPU runtime's threads (tf_XLAEigen: one per device when each runs
single-threaded; tf_XLAPjRtCpuClient otherwise) and, on a GPU or TPU, the device planes'
"XLA Ops" lines (not checked on those here: no such device was at hand). The HLO text is
parsed with regular expressions: XLA has no Python API for per-instruction FLOPs.
"""

from __future__ import annotations

import collections
import dataclasses
import math
import re
from collections.abc import Iterable
from typing import Any

COLLECTIVE_OPCODES = (
    "all-reduce",
    "all-gather",
    "reduce-scatter",
    "all-to-all",
    "collective-permute",
    "collective-broadcast",
)
# CPU runtime events of a device waiting for the others at a collective.
WAIT_EVENTS = ("Rendezvous", "Wait:")
# Events that enclose other events (or mark their end); counting them would count twice.
# Runtime internals named Class::Method (thread-pool awaits and the like) overlap the
# operations they serve and are skipped too.
ENCLOSING_EVENTS = ("end:", "conditional", "while", "call")
OPERATION_LINES = ("XLAEigen", "XLAPjRtCpuClient", "XLA Ops")

_INSTRUCTION = re.compile(r"^\s*(?:ROOT\s+)?%(?P<name>[\w.\-]+)\s*=\s*(?P<rest>.*)$", re.MULTILINE)
_SHAPE = re.compile(r"^\(?\s*\w+\[(?P<dims>[\d,]*)\]")
_OPCODE = re.compile(r"\s(?P<opcode>[a-z][\w\-]*)\(")
_CALLS = re.compile(r"calls=%(?P<callee>[\w.\-]+)")
_COMPUTATION = re.compile(r"^(?:ENTRY\s+)?%(?P<name>[\w.\-]+)\s.*\{\s*$")
_OPERAND = re.compile(r"(?:\w+\[[\d,]*\]\S*\s+)?%(?P<name>[\w.\-]+)")
_CONTRACTING = re.compile(r"lhs_contracting_dims=\{(?P<dims>[\d,]*)\}")
_OP_NAME = re.compile(r'op_name="(?P<op_name>[^"]*)"')
_GEMM_TARGET = re.compile(r'custom_call_target="[^"]*(gemm|matmul)[^"]*"', re.IGNORECASE)
_GEMM_CONTRACTING = re.compile(r'"lhs_contracting_dimensions":\[(?P<dims>[^\]]*)\]')
_CONV_LABELS = re.compile(r"dim_labels=\w+_(?P<kernel>\w+)->\w+")
_TRANSFORM = re.compile(r"(?:transpose|jvp|remat|checkpoint)\((?P<inner>[^()]*)\)")


@dataclasses.dataclass(frozen=True)
class Instruction:
    """What the profile needs of one HLO instruction."""

    kind: str  # "matmul", "collective" or "other"
    flops: float  # of the dots and convolutions it contains (0 for the rest)
    op_name: str  # JAX's name stack from the metadata, "" if none


def _dims(text: str) -> list[int] | None:
    match = _SHAPE.match(text.strip())
    if match is None:
        return None
    return [int(d) for d in match.group("dims").split(",") if d]


def parse_hlo(hlo_text: str) -> dict[str, Instruction]:
    """Every instruction of an HLO module's text, by name, with its kind and matmul FLOPs.

    A dot's FLOPs are 2 x (output elements) x (contracted elements of the left operand); a
    convolution's, 2 x (output elements) x (kernel weights per output feature). A fusion (or
    any instruction with calls=) has those of the computation it calls.
    """
    shapes: dict[str, list[int]] = {}
    bodies: dict[str, list[str]] = collections.defaultdict(list)
    lines: dict[str, str] = {}
    computation = ""
    for line in hlo_text.splitlines():
        header = _COMPUTATION.match(line)
        if header and "=" not in line.split("{")[0]:
            computation = header.group("name")
            continue
        match = _INSTRUCTION.match(line)
        if match is None:
            continue
        name, rest = match.group("name"), match.group("rest")
        dims = _dims(rest)
        if dims is not None:
            shapes[name] = dims
        bodies[computation].append(name)
        lines[name] = rest

    def operand_dims(operands: str, index: int) -> list[int]:
        names = _OPERAND.findall(operands)
        return shapes.get(names[index], []) if len(names) > index else []

    def own_flops(rest: str) -> float:
        opcode = _OPCODE.search(rest)
        output = _dims(rest)
        if opcode is None or output is None:
            return 0.0
        op, operands = opcode.group("opcode"), rest[opcode.end() :]
        if op == "dot" or (op == "custom-call" and _GEMM_TARGET.search(rest)):
            # GPU GEMM custom-calls keep the dot's dimension numbers in their backend config.
            contracting = _CONTRACTING.search(rest) or _GEMM_CONTRACTING.search(rest)
            if contracting is None:
                return 0.0
            lhs = operand_dims(operands, 0)
            contracted = [int(d) for d in re.findall(r"\d+", contracting.group("dims"))]
            if not lhs or any(d >= len(lhs) for d in contracted):
                return 0.0
            return 2.0 * math.prod(output) * math.prod(lhs[d] for d in contracted)
        if op == "convolution":
            # Each output element sums over the kernel's window and input features: the kernel
            # holds that many weights per output feature (per group, for grouped convolutions).
            kernel, labels = operand_dims(operands, 1), _CONV_LABELS.search(rest)
            if not kernel or labels is None or "o" not in labels.group("kernel"):
                return 0.0
            per_output = math.prod(kernel) / kernel[labels.group("kernel").index("o")]
            return 2.0 * math.prod(output) * per_output
        return 0.0

    def flops_of(name: str, seen: frozenset[str] = frozenset()) -> float:
        rest = lines[name]
        total = own_flops(rest)
        callee = _CALLS.search(rest)
        if callee and callee.group("callee") not in seen:
            inner = callee.group("callee")
            total += sum(flops_of(n, seen | {inner}) for n in bodies.get(inner, []))
        return total

    instructions = {}
    for name, rest in lines.items():
        opcode = _OPCODE.search(rest)
        op = opcode.group("opcode") if opcode else ""
        flops = flops_of(name)
        if any(op.startswith(c) for c in COLLECTIVE_OPCODES):
            kind = "collective"
        elif flops > 0:
            kind = "matmul"
        else:
            kind = "other"
        op_name = _OP_NAME.search(rest)
        instructions[name] = Instruction(kind, flops, op_name.group("op_name") if op_name else "")
    return instructions


def module_path(op_name: str) -> str:
    """JAX's op_name -> 'fwd|bwd <module path>/<op>', blocks_3 and blocks_7 both as blocks_N."""
    op_name = op_name.split(";")[0]  # a fusion of several ops lists them all
    direction = "bwd" if "transpose(" in op_name else "fwd"
    path = re.sub(r"^jit\([^)]*\)/", "", op_name)
    unwrapped = None
    while unwrapped != path:  # transpose(jvp(Model)) -> Model, innermost first
        unwrapped, path = path, _TRANSFORM.sub(r"\g<inner>", path)
    path = re.sub(r"_\d+(?=/|$)", "_N", path)
    path = re.sub(r"/branch_\d+_fun", "", path)
    return f"{direction} {path or '(no metadata)'}"


@dataclasses.dataclass
class Breakdown:
    """Device seconds per step (averaged over devices), by kind and by module path."""

    seconds_by_kind: dict[str, float]
    matmul_flops: float  # per device per step
    other_by_path: list[tuple[str, float]]  # (path, seconds), largest first
    matmul_by_path: list[tuple[str, float, float]]  # (path, seconds, FLOPs), largest first
    unmatched_seconds: float  # traced operations not found in the HLO module

    @property
    def total_seconds(self) -> float:
        return sum(self.seconds_by_kind.values())

    def matmul_rate(self) -> float:
        """FLOP/s of the matmul instructions alone, on one device."""
        seconds = self.seconds_by_kind.get("matmul", 0.0)
        return self.matmul_flops / seconds if seconds else float("nan")

    def seconds_with_matmuls_at(self, rate: float) -> float:
        """The step's device time if every matmul ran at `rate` FLOP/s and the rest stayed:
        how far speeding up the matmuls alone could take the step."""
        rest = self.total_seconds - self.seconds_by_kind.get("matmul", 0.0)
        return self.matmul_flops / rate + rest


def operation_events(profile: Any) -> Iterable[tuple[str, float]]:
    """(name, seconds) of every event on the per-device operation lines of a ProfileData."""
    for plane in profile.planes:
        for line in plane.lines:
            if any(marker in line.name for marker in OPERATION_LINES):
                for event in line.events:
                    yield event.name, event.duration_ns * 1e-9


def attribute(
    events: Iterable[tuple[str, float]],
    instructions: dict[str, Instruction],
    num_steps: int,
    num_devices: int,
    top: int = 12,
) -> Breakdown:
    """Sum traced operation times by kind and by module path, per device and per step."""
    per = 1.0 / (num_steps * num_devices)
    by_kind: dict[str, float] = collections.Counter()
    by_path: dict[str, float] = collections.Counter()
    matmuls: dict[str, list[float]] = collections.defaultdict(lambda: [0.0, 0.0])
    flops = unmatched = 0.0
    for name, seconds in events:
        if name.startswith(ENCLOSING_EVENTS) or "::" in name:
            continue
        if name.startswith(WAIT_EVENTS):
            by_kind["collective"] += seconds * per
            continue
        instruction = instructions.get(name)
        if instruction is None:
            unmatched += seconds * per
            continue
        by_kind[instruction.kind] += seconds * per
        if instruction.kind == "matmul":
            flops += instruction.flops * per
            path = matmuls[module_path(instruction.op_name)]
            path[0] += seconds * per
            path[1] += instruction.flops * per
        elif instruction.kind == "other":
            by_path[module_path(instruction.op_name)] += seconds * per
    ranked = sorted(by_path.items(), key=lambda item: -item[1])[:top]
    ranked_matmuls = sorted(
        ((path, seconds, path_flops) for path, (seconds, path_flops) in matmuls.items()),
        key=lambda item: -item[1],
    )[:top]
    return Breakdown(dict(by_kind), flops, ranked, ranked_matmuls, unmatched)


def report(
    breakdown: Breakdown, yardstick_per_device: float, model_flops_per_device: float = 0.0
) -> str:
    """The breakdown as printed by the benchmark. With the step's model FLOPs per device (XLA's
    cost analysis), also the fraction of the matmul rate the traced device time achieves, and
    the most it could with every matmul at the yardstick's rate and everything else as traced."""
    total = breakdown.total_seconds
    lines = [f"device time per step and device: {total * 1e3:.1f} ms"]
    if model_flops_per_device:
        bound = breakdown.seconds_with_matmuls_at(yardstick_per_device)
        lines[0] += (
            f" = {model_flops_per_device / total / yardstick_per_device:.0%} of the"
            " matmul rate; with every matmul at that rate: "
            f"{bound * 1e3:.1f} ms = "
            f"{model_flops_per_device / bound / yardstick_per_device:.0%}"
        )
    labels = {
        "matmul": "matmuls and convolutions",
        "other": "other (elementwise, reductions, copies)",
        "collective": "collectives, waits included",
    }
    for kind in ("matmul", "other", "collective"):
        seconds = breakdown.seconds_by_kind.get(kind, 0.0)
        extra = ""
        if kind == "matmul" and seconds:
            rate = breakdown.matmul_rate()
            extra = (
                f"  {breakdown.matmul_flops / 1e9:.1f} GFLOP at {rate / 1e9:.1f} GFLOP/s"
                f" = {rate / yardstick_per_device:.0%} of the matmul rate"
            )
        share = seconds / total if total else float("nan")
        lines.append(f"  {labels[kind]:42s}{seconds * 1e3:8.1f} ms  {share:4.0%}{extra}")
    if breakdown.unmatched_seconds:
        lines.append(f"  {'not in the HLO module':42s}{breakdown.unmatched_seconds * 1e3:8.1f} ms")
    lines.append("  largest matmul costs by module (blocks_N: all blocks together):")
    for path, seconds, flops in breakdown.matmul_by_path:
        rate = flops / seconds / yardstick_per_device if seconds else float("nan")
        lines.append(f"    {seconds * 1e3:7.1f} ms  {rate:4.0%} of the matmul rate  {path}")
    lines.append("  largest 'other' costs by module:")
    for path, seconds in breakdown.other_by_path:
        lines.append(f"    {seconds * 1e3:7.1f} ms  {path}")
    return "\n".join(lines)
