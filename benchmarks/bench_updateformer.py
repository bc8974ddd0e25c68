"""Benchmark DiTUpdateFormer's forward and backward pass against a naive implementation.

The naive model computes the same function with the same parameters, written the way a
first draft of this architecture did it. It uses explicit softmax attention and expands the
boolean masks into additive float tensors of shape (B, heads, L, S). It also repeats the
conditioning vector for every row with ``.repeat``, so the adaLN modulation Linear runs once
per row.

The script prints, for each shape:

- the median time ratio of the two models, measured alternately in one process;
- the FLOPs of one step (``torch.utils.flop_counter.FlopCounterMode``) and the achieved FLOP
  rate as a fraction of a large matmul timed in the same run;
- the bytes saved for backward (``torch.autograd.graph.saved_tensors_hooks``);
- the peak memory of one step, each variant in its own subprocess.

Run from the repository root, for example::

    python benchmarks/bench_updateformer.py --shape both --repeats 10
    python benchmarks/bench_updateformer.py --quick           # smoke check, about a minute
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import json
import os
import shlex
import statistics
import subprocess
import sys
import time
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.flop_counter import FlopCounterMode, sdpa_backward_flop_count, sdpa_flop_count

from ditblocks import DiTUpdateFormer
from reporting import describe_machine, print_table, spread, synchronize

HIDDEN_SIZE = 384
NUM_HEADS = 6
DEPTH = 6
MATMUL_SIZE = 2048
SEED = 0

# Relative output error allowed between the two models, per dtype.
TOLERANCE = {torch.float32: 1e-4, torch.bfloat16: 5e-2}


@dataclasses.dataclass(frozen=True)
class Shape:
    """Input sizes of one benchmark case."""

    name: str
    batch: int
    points: int
    steps: int
    context_tokens: int


SHAPES = {
    "small": Shape("small", batch=4, points=64, steps=16, context_tokens=220),
    # Batch 1 because at batch 4 the naive model's step needs an estimated 25 GiB or more.
    # Activations grow linearly with the batch, so the memory ratios barely depend on it.
    "large": Shape("large", batch=1, points=256, steps=32, context_tokens=800),
}
TINY = Shape("tiny", batch=1, points=4, steps=4, context_tokens=8)


# ---------------------------------------------------------------------------------------------
# Naive baseline. Parameter names match DiTUpdateFormer's, so load_state_dict copies weights.
# ---------------------------------------------------------------------------------------------


class NaiveAttention(nn.Module):
    """Multi-head attention with an explicit softmax and an additive float mask."""

    def __init__(self, dim: int, num_heads: int, context_dim: int | None, factory: dict) -> None:
        super().__init__()
        self.num_heads = num_heads
        self.head_dim = dim // num_heads
        self.is_cross = context_dim is not None
        if self.is_cross:
            self.q = nn.Linear(dim, dim, **factory)
            self.kv = nn.Linear(context_dim, 2 * dim, **factory)
        else:
            self.qkv = nn.Linear(dim, 3 * dim, **factory)
        self.proj = nn.Linear(dim, dim, **factory)

    def forward(
        self, x: torch.Tensor, context: torch.Tensor | None, additive_mask: torch.Tensor | None
    ) -> torch.Tensor:
        rows, length, dim = x.shape
        if self.is_cross:
            q = self.q(x).view(rows, length, self.num_heads, self.head_dim).transpose(1, 2)
            kv = self.kv(context).view(rows, context.shape[1], 2, self.num_heads, self.head_dim)
            k, v = kv.permute(2, 0, 3, 1, 4)
        else:
            qkv = self.qkv(x).view(rows, length, 3, self.num_heads, self.head_dim)
            q, k, v = qkv.permute(2, 0, 3, 1, 4)

        scores = (q @ k.transpose(-2, -1)) * self.head_dim**-0.5  # (rows, heads, L, S)
        if additive_mask is not None:
            scores = scores + additive_mask
        weights = scores.softmax(dim=-1)

        out = (weights @ v).transpose(1, 2).reshape(rows, length, dim)
        return self.proj(out)


class NaiveMlp(nn.Module):
    """Linear, tanh GELU, Linear."""

    def __init__(self, dim: int, hidden: int, factory: dict) -> None:
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden, **factory)
        self.fc2 = nn.Linear(hidden, dim, **factory)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(F.gelu(self.fc1(x), approximate="tanh"))


class NaiveBlock(nn.Module):
    """adaLN-Zero block whose modulation Linear runs on one repeated ``c`` per row."""

    def __init__(self, dim: int, num_heads: int, context_dim: int | None, factory: dict) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, elementwise_affine=False, eps=1e-6, **factory)
        self.norm2 = nn.LayerNorm(dim, elementwise_affine=False, eps=1e-6, **factory)
        if context_dim is not None:
            self.context_norm = nn.LayerNorm(context_dim, eps=1e-6, **factory)
        self.attn = NaiveAttention(dim, num_heads, context_dim, factory)
        self.mlp = NaiveMlp(dim, 4 * dim, factory)
        self.adaLN_modulation = nn.Sequential(nn.SiLU(), nn.Linear(dim, 6 * dim, **factory))

    def forward(
        self,
        x: torch.Tensor,
        c_rows: torch.Tensor,
        additive_mask: torch.Tensor | None,
        context: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Update ``x`` (R, L, C) with ``c_rows`` (R, L, C), one conditioning copy per row."""
        modulation = self.adaLN_modulation(c_rows).chunk(6, dim=-1)
        shift_msa, scale_msa, gate_msa, shift_mlp, scale_mlp, gate_mlp = modulation

        if context is not None:
            context = self.context_norm(context)
        hidden = self.norm1(x) * (1 + scale_msa) + shift_msa
        x = x + gate_msa * self.attn(hidden, context, additive_mask)

        hidden = self.norm2(x) * (1 + scale_mlp) + shift_mlp
        return x + gate_mlp * self.mlp(hidden)


class NaiveLayer(nn.Module):
    """Cross-attention, spatial and temporal blocks, as in DiTUpdateLayer."""

    def __init__(self, dim: int, num_heads: int, factory: dict) -> None:
        super().__init__()
        self.cross_block = NaiveBlock(dim, num_heads, dim, factory)
        self.space_block = NaiveBlock(dim, num_heads, None, factory)
        self.time_block = NaiveBlock(dim, num_heads, None, factory)

    def forward(
        self,
        x: torch.Tensor,
        context: torch.Tensor,
        c_rows: dict[str, torch.Tensor],
        masks: dict[str, torch.Tensor | None],
    ) -> torch.Tensor:
        batch, points, steps, dim = x.shape
        rows = x.reshape(batch, points * steps, dim)
        rows = self.cross_block(rows, c_rows["cross"], masks["cross"], context)

        # Spatial attention: one sequence of N points per (sample, step).
        rows = rows.view(batch, points, steps, dim).transpose(1, 2).reshape(-1, points, dim)
        rows = self.space_block(rows, c_rows["space"], masks["space"])

        # Temporal attention: one sequence of T steps per (sample, point).
        rows = rows.view(batch, steps, points, dim).transpose(1, 2).reshape(-1, steps, dim)
        rows = self.time_block(rows, c_rows["time"], masks["time"])
        return rows.view(batch, points, steps, dim)


class NaiveUpdateFormer(nn.Module):
    """DiTUpdateFormer written naively: per-row conditioning and per-head float masks."""

    def __init__(self, depth: int, dim: int, num_heads: int, factory: dict) -> None:
        super().__init__()
        self.num_heads = num_heads
        self.layers = nn.ModuleList(NaiveLayer(dim, num_heads, factory) for _ in range(depth))

    def forward(
        self,
        tokens: torch.Tensor,
        context: torch.Tensor,
        c: torch.Tensor,
        context_mask: torch.Tensor | None = None,
        causal: bool = False,
    ) -> torch.Tensor:
        batch, points, steps, _ = tokens.shape
        heads = self.num_heads

        # The conditioning and the masks are built once per forward and shared by all layers.
        c_rows = {
            "cross": c[:, None, :].repeat(1, points * steps, 1),
            "space": c.repeat_interleave(steps, dim=0)[:, None, :].repeat(1, points, 1),
            "time": c.repeat_interleave(points, dim=0)[:, None, :].repeat(1, steps, 1),
        }
        masks: dict[str, torch.Tensor | None] = {"cross": None, "space": None, "time": None}
        if context_mask is not None:
            allowed = context_mask[:, None, None, :].repeat(1, heads, points * steps, 1)
            masks["cross"] = _additive_mask(allowed, tokens.dtype)
        if causal:
            lower = torch.ones(steps, steps, dtype=torch.bool, device=tokens.device).tril()
            allowed = lower[None, None].repeat(batch * points, heads, 1, 1)
            masks["time"] = _additive_mask(allowed, tokens.dtype)

        x = tokens
        for layer in self.layers:
            x = layer(x, context, c_rows, masks)
        return x


def _additive_mask(allowed: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    # Every query row of the benchmark keeps at least one key, so -inf never fills a whole row.
    additive = torch.zeros(allowed.shape, dtype=dtype, device=allowed.device)
    return additive.masked_fill(~allowed, float("-inf"))


# ---------------------------------------------------------------------------------------------
# Models and inputs
# ---------------------------------------------------------------------------------------------


def build_library_model(device: str, dtype: torch.dtype, checkpointing: bool) -> nn.Module:
    """Build DiTUpdateFormer with random non-zero adaLN modulation, so no gate is zero."""
    torch.manual_seed(SEED)
    model = DiTUpdateFormer(
        depth=DEPTH,
        hidden_size=HIDDEN_SIZE,
        num_heads=NUM_HEADS,
        gradient_checkpointing=checkpointing,
        device=device,
        dtype=dtype,
    )
    with torch.no_grad():
        for name, parameter in model.named_parameters():
            if "adaLN_modulation" in name:
                parameter.normal_(0.0, 0.02)
    return model.train()


def build_naive_model(device: str, dtype: torch.dtype) -> nn.Module:
    """Build the naive baseline with freshly initialised weights."""
    factory = {"device": device, "dtype": dtype}
    return NaiveUpdateFormer(DEPTH, HIDDEN_SIZE, NUM_HEADS, factory).train()


def make_inputs(shape: Shape, device: str, dtype: torch.dtype) -> dict[str, torch.Tensor]:
    """Create tokens, context, conditioning and a context key-padding mask for ``shape``."""
    generator = torch.Generator().manual_seed(SEED + 1)

    def normal(*size: int) -> torch.Tensor:
        return torch.randn(*size, generator=generator).to(device=device, dtype=dtype)

    # Sample b keeps the first context_tokens * (1 - (b + 1) / (2 * batch)) tokens, so every
    # sample has padding and the last one is half padding.
    keep = [
        shape.context_tokens - (shape.context_tokens * (b + 1)) // (2 * shape.batch)
        for b in range(shape.batch)
    ]
    context_mask = torch.arange(shape.context_tokens)[None, :] < torch.tensor(keep)[:, None]
    return {
        "tokens": normal(shape.batch, shape.points, shape.steps, HIDDEN_SIZE),
        "context": normal(shape.batch, shape.context_tokens, HIDDEN_SIZE),
        "c": normal(shape.batch, HIDDEN_SIZE),
        "context_mask": context_mask.to(device),
    }


def run_step(model: nn.Module, inputs: dict[str, torch.Tensor]) -> torch.Tensor:
    """Clear the gradients, run one forward and backward pass and return the output."""
    for parameter in model.parameters():
        parameter.grad = None
    return forward_backward(model, inputs)


def forward_backward(model: nn.Module, inputs: dict[str, torch.Tensor]) -> torch.Tensor:
    """Run one forward and backward pass, accumulating into existing gradients."""
    out = model(
        inputs["tokens"],
        inputs["context"],
        inputs["c"],
        context_mask=inputs["context_mask"],
        causal=True,
    )
    out.float().square().mean().backward()
    return out.detach()


def check_agreement(
    library: nn.Module, naive: nn.Module, inputs: dict[str, torch.Tensor], dtype: torch.dtype
) -> dict[str, float]:
    """Compare outputs and gradients of the two models; raise if they differ beyond tolerance."""
    out_library = run_step(library, inputs).float()
    out_naive = run_step(naive, inputs).float()
    output_error = ((out_library - out_naive).abs().max() / out_naive.abs().max()).item()

    gradient_error = 0.0
    naive_parameters = dict(naive.named_parameters())
    for name, parameter in library.named_parameters():
        reference = naive_parameters[name].grad.float()
        difference = (parameter.grad.float() - reference).abs().max()
        gradient_error = max(gradient_error, (difference / reference.abs().max()).item())

    # The tokens must actually change, otherwise the comparison would hold trivially.
    change = ((out_library - inputs["tokens"].float()).abs().max()).item()
    if change == 0.0 or output_error > TOLERANCE[dtype] or gradient_error > 10 * TOLERANCE[dtype]:
        raise RuntimeError(
            f"The library and naive models disagree: relative output error {output_error:.2e}, "
            f"relative gradient error {gradient_error:.2e}, output change {change:.2e}; "
            f"allowed {TOLERANCE[dtype]:.0e} and {10 * TOLERANCE[dtype]:.0e}."
        )
    return {"output_error": output_error, "gradient_error": gradient_error}


# ---------------------------------------------------------------------------------------------
# Timing and FLOPs
# ---------------------------------------------------------------------------------------------


def time_call(function: Callable[[], object], device: str) -> float:
    """Return the wall-clock seconds of one call, synchronising the device around it."""
    synchronize(device)
    start = time.perf_counter()
    function()
    synchronize(device)
    return time.perf_counter() - start


def time_alternating(
    library: nn.Module,
    naive: nn.Module,
    inputs: dict[str, torch.Tensor],
    matmul: Callable[[], object],
    repeats: int,
    device: str,
) -> dict[str, list[float]]:
    """Time library, naive and matmul calls in turn, ``repeats`` rounds after one warm-up."""
    for function in (lambda: run_step(library, inputs), lambda: run_step(naive, inputs), matmul):
        function()

    times: dict[str, list[float]] = {"library": [], "naive": [], "matmul": []}
    for _ in range(repeats):
        times["library"].append(time_call(lambda: run_step(library, inputs), device))
        times["naive"].append(time_call(lambda: run_step(naive, inputs), device))
        times["matmul"].append(time_call(matmul, device))
    return times


def make_matmul(device: str, dtype: torch.dtype) -> tuple[Callable[[], object], int]:
    """Return a square matmul of size MATMUL_SIZE and its FLOP count."""
    generator = torch.Generator().manual_seed(SEED + 2)
    a = torch.randn(MATMUL_SIZE, MATMUL_SIZE, generator=generator).to(device=device, dtype=dtype)
    b = torch.randn(MATMUL_SIZE, MATMUL_SIZE, generator=generator).to(device=device, dtype=dtype)
    return (lambda: a @ b), 2 * MATMUL_SIZE**3


def _cpu_sdpa_flops(query_shape, key_shape, value_shape, *args, out_shape=None, **kwargs) -> int:
    return sdpa_flop_count(query_shape, key_shape, value_shape)


def _cpu_sdpa_backward_flops(
    grad_out_shape, query_shape, key_shape, value_shape, *args, out_shape=None, **kwargs
) -> int:
    return sdpa_backward_flop_count(grad_out_shape, query_shape, key_shape, value_shape)


# FlopCounterMode in torch 2.14 has formulas for the CUDA SDPA kernels but not for the CPU
# flash kernel. These count it the same way: the full L x S score matrix, masks ignored.
CPU_SDPA_FLOPS = {
    torch.ops.aten._scaled_dot_product_flash_attention_for_cpu: _cpu_sdpa_flops,
    torch.ops.aten._scaled_dot_product_flash_attention_for_cpu_backward: _cpu_sdpa_backward_flops,
}


def count_flops(model: nn.Module, inputs: dict[str, torch.Tensor]) -> dict[str, int]:
    """Count the FLOPs of one step, with and without the CPU SDPA kernels."""
    with FlopCounterMode(display=False) as default_counter:
        run_step(model, inputs)
    with FlopCounterMode(display=False, custom_mapping=CPU_SDPA_FLOPS) as full_counter:
        run_step(model, inputs)
    by_op = {str(op): count for op, count in full_counter.get_flop_counts()["Global"].items()}
    sdpa = sum(count for op, count in by_op.items() if "scaled_dot_product" in op)
    return {
        "default": default_counter.get_total_flops(),
        "total": full_counter.get_total_flops(),
        "sdpa": sdpa,
    }


# ---------------------------------------------------------------------------------------------
# Memory
# ---------------------------------------------------------------------------------------------


class SavedBytesCounter:
    """Hooks that record the bytes of distinct non-parameter storages saved for backward.

    NOTE: Non-reentrant gradient checkpointing saves the tensors of a checkpointed layer through
    its own hooks, so with checkpointing this counts only what autograd keeps between layers.
    """

    def __init__(self, model: nn.Module) -> None:
        self.parameter_storages = {p.untyped_storage().data_ptr() for p in model.parameters()}
        self.saved: dict[int, int] = {}

    @property
    def total(self) -> int:
        return sum(self.saved.values())

    def hooks(self) -> torch.autograd.graph.saved_tensors_hooks:
        return torch.autograd.graph.saved_tensors_hooks(self._pack, lambda tensor: tensor)

    def _pack(self, tensor: torch.Tensor) -> torch.Tensor:
        storage = tensor.untyped_storage()
        if storage.data_ptr() not in self.parameter_storages:
            self.saved[storage.data_ptr()] = storage.nbytes()
        return tensor


def reset_peak_rss() -> None:
    """Reset the kernel's peak-RSS counter (VmHWM) of this process to the current RSS."""
    # Linux >= 4.0. ru_maxrss cannot be used: the kernel carries the parent's peak across
    # fork and exec, so every worker would report at least the benchmark process's peak.
    with open("/proc/self/clear_refs", "w") as clear_refs:
        clear_refs.write("5")


def read_rss_bytes(field: str) -> int:
    """Return ``VmRSS`` (current) or ``VmHWM`` (peak) of this process in bytes."""
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith(f"{field}:"):
                return int(line.split()[1]) * 1024
    raise RuntimeError(f"{field} was not found in /proc/self/status.")


def measure_memory_worker(args: argparse.Namespace) -> None:
    """Measure one variant's peak memory of one step and print it as JSON (subprocess mode)."""
    dtype = getattr(torch, args.dtype)
    shape = SHAPES[args.worker_shape]
    if args.worker_variant == "naive":
        model = build_naive_model(args.device, dtype)
    else:
        checkpointing = args.worker_variant == "library-checkpointing"
        model = build_library_model(args.device, dtype, checkpointing)

    # A tiny step loads kernels and allocator pools before the measured step. Gradient buffers
    # are allocated up front, so the measured peak is activations and temporaries only.
    run_step(model, make_inputs(TINY, args.device, dtype))
    inputs = make_inputs(shape, args.device, dtype)
    for parameter in model.parameters():
        parameter.grad = torch.zeros_like(parameter)

    if args.device == "cuda":
        torch.cuda.synchronize()
        before = torch.cuda.memory_allocated()
        torch.cuda.reset_peak_memory_stats()
    else:
        reset_peak_rss()
        before = read_rss_bytes("VmRSS")

    # The hooks return each tensor unchanged, so counting does not change what is kept alive.
    counter = SavedBytesCounter(model)
    with counter.hooks():
        forward_backward(model, inputs)

    if args.device == "cuda":
        torch.cuda.synchronize()
        peak = torch.cuda.max_memory_allocated()
    else:
        peak = read_rss_bytes("VmHWM")
    print(json.dumps({"peak_above_start": peak - before, "saved_bytes": counter.total}))


def measure_memory(variant: str, shape: Shape, args: argparse.Namespace) -> dict[str, int]:
    """Run the memory worker for one variant and shape in a fresh subprocess."""
    # With a 64 KiB mmap threshold, glibc returns large freed blocks to the system at once.
    # Otherwise it keeps them in its heap and the peak RSS stops following the live tensors.
    env = {**os.environ, "MALLOC_MMAP_THRESHOLD_": "65536"}
    command = [
        sys.executable,
        os.path.abspath(__file__),
        "--device",
        args.device,
        "--dtype",
        args.dtype,
        "--worker-variant",
        variant,
        "--worker-shape",
        shape.name,
    ]
    result = subprocess.run(command, env=env, capture_output=True, text=True, check=False)
    if result.returncode != 0:
        raise RuntimeError(
            f"Memory worker for {variant} at the {shape.name} shape failed with exit code "
            f"{result.returncode}:\n{result.stderr[-2000:]}"
        )
    return json.loads(result.stdout.strip().splitlines()[-1])


# ---------------------------------------------------------------------------------------------
# Report
# ---------------------------------------------------------------------------------------------


def gib(num_bytes: float) -> str:
    return f"{num_bytes / 2**30:.2f} GiB"


def benchmark_speed(shape: Shape, args: argparse.Namespace) -> list[tuple[str, str]]:
    """Check agreement, then time and count FLOPs at ``shape``; return table rows."""
    dtype = getattr(torch, args.dtype)
    library = build_library_model(args.device, dtype, checkpointing=False)
    naive = build_naive_model(args.device, dtype)
    naive.load_state_dict(library.state_dict(), strict=True)
    inputs = make_inputs(shape, args.device, dtype)

    agreement = check_agreement(library, naive, inputs, dtype)
    flops_library = count_flops(library, inputs)
    flops_naive = count_flops(naive, inputs)

    matmul, matmul_flops = make_matmul(args.device, dtype)
    times = time_alternating(library, naive, inputs, matmul, args.repeats, args.device)
    ratios = [n / lib for n, lib in zip(times["naive"], times["library"], strict=True)]

    matmul_rate = matmul_flops / statistics.median(times["matmul"])
    library_rate = flops_library["total"] / statistics.median(times["library"])
    naive_rate = flops_naive["total"] / statistics.median(times["naive"])
    sdpa_note = (
        f"{flops_library['sdpa'] / 1e9:.1f} GFLOP of it SDPA (custom formula; "
        f"FlopCounterMode alone counts {flops_library['default'] / 1e9:.1f} GFLOP)"
    )
    return [
        (
            "Agreement (relative max error: output, gradients)",
            f"{agreement['output_error']:.1e}, {agreement['gradient_error']:.1e}",
        ),
        ("Step time, library, s: median (min-max)", spread(times["library"])),
        ("Step time, naive, s: median (min-max)", spread(times["naive"])),
        ("**Speed-up, naive / library: median of pairs (min-max)**", spread(ratios)),
        ("FLOPs per step, library", f"{flops_library['total'] / 1e9:.1f} GFLOP, {sdpa_note}"),
        ("FLOPs per step, naive", f"{flops_naive['total'] / 1e9:.1f} GFLOP"),
        (
            f"Matmul {MATMUL_SIZE}x{MATMUL_SIZE} {args.dtype}, GFLOP/s: median (min-max)",
            spread([matmul_flops / t / 1e9 for t in times["matmul"]]),
        ),
        (
            "Library GFLOP/s (fraction of matmul)",
            f"{library_rate / 1e9:.1f} ({library_rate / matmul_rate:.0%})",
        ),
        (
            "Naive GFLOP/s (fraction of matmul)",
            f"{naive_rate / 1e9:.1f} ({naive_rate / matmul_rate:.0%})",
        ),
    ]


def benchmark_memory(shape: Shape, args: argparse.Namespace) -> list[tuple[str, str]]:
    """Measure peak memory and saved-for-backward bytes of each variant; return table rows."""
    variants = ["naive", "library"] + (["library-checkpointing"] if shape.name == "large" else [])
    figures = {variant: measure_memory(variant, shape, args) for variant in variants}
    naive = figures["naive"]
    unit = "peak allocated" if args.device == "cuda" else "peak RSS above start"

    rows = []
    for variant, figure in figures.items():
        ratio_peak = figure["peak_above_start"] / naive["peak_above_start"]
        ratio_saved = figure["saved_bytes"] / naive["saved_bytes"]
        rows.append(
            (
                f"{variant}: {unit} (ratio to naive)",
                f"{gib(figure['peak_above_start'])} ({ratio_peak:.2f}x)",
            )
        )
        rows.append(
            (
                f"{variant}: saved for backward (ratio to naive)",
                f"{gib(figure['saved_bytes'])} ({ratio_saved:.2f}x)",
            )
        )
    return rows


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--device", choices=["cpu", "cuda"], default="cpu", help="Device to run on (default: cpu)."
    )
    parser.add_argument(
        "--dtype",
        choices=["float32", "bfloat16"],
        default="float32",
        help="Dtype of the models, inputs and reference matmul.",
    )
    parser.add_argument(
        "--repeats",
        type=int,
        default=10,
        help="Timed rounds per shape; each round runs library, naive, matmul.",
    )
    parser.add_argument(
        "--shape",
        choices=["small", "large", "both"],
        default="both",
        help="Shapes to measure. Time and FLOPs are measured at the small "
        "shape only; memory at every chosen shape.",
    )
    parser.add_argument(
        "--quick", action="store_true", help="Smoke check: 2 timed rounds and the small shape only."
    )
    parser.add_argument("--worker-variant", help=argparse.SUPPRESS)
    parser.add_argument("--worker-shape", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)

    if args.repeats < 1:
        parser.error(f"--repeats must be at least 1, got {args.repeats}.")
    if args.device == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda was requested but torch.cuda.is_available() is False.")
    if args.quick:
        args.repeats, args.shape = 2, "small"
    return args


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    if args.worker_variant:
        measure_memory_worker(args)
        return

    print(f"Command: python {shlex.join(sys.argv)}")
    print(f"Machine: {describe_machine(args.device)}")
    print(f"Date: {datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M} UTC")
    print(
        f"Model: DiTUpdateFormer depth {DEPTH}, hidden {HIDDEN_SIZE}, {NUM_HEADS} heads, "
        f"{args.dtype} on {args.device}, forward and backward, context key-padding mask and "
        "causal temporal attention"
    )

    shapes = [SHAPES["small"], SHAPES["large"]] if args.shape == "both" else [SHAPES[args.shape]]

    # Memory first, so the workers share the machine with a parent that has allocated little.
    memory_rows = {shape.name: benchmark_memory(shape, args) for shape in shapes}
    for shape in shapes:
        rows = benchmark_speed(shape, args) if shape.name == "small" else []
        title = (
            f"Shape {shape.name}: B={shape.batch}, N={shape.points}, T={shape.steps}, "
            f"M={shape.context_tokens}"
        )
        print_table(title, rows + memory_rows[shape.name])


if __name__ == "__main__":
    main()
