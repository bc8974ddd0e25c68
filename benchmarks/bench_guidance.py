"""Benchmark batched classifier-free guidance and the TextConditioner's encoder cache.

Two measurements, each as median ratios of variants timed alternately (A B A B) in one
process:

- Sampling a DiTUpdateFormer with DDIM and guidance scale 2.0. Batched: ``ditblocks.sample``
  makes one model call of 2B per step, with the unconditional context padded to the
  conditional length and masked. Two passes: one call of B with the conditional context and
  one of B with the shorter unconditional context per step, then the same guidance formula.
- Encoding a batch of 64 instructions that repeat 8 distinct strings with a tiny, randomly
  initialised UMT5 encoder and a SentencePiece tokenizer trained here, offline. Without the
  cache (``cache_size=0``) the encoder runs on 64 strings. With the cache, cleared before each
  call, it runs on the 8 distinct strings. A third row times calls with a warm cache.

Run from the repository root, for example::

    python benchmarks/bench_guidance.py                    # the full measurement
    python benchmarks/bench_guidance.py --num-inference-steps 2 --repeats 3   # a slow CPU

The script prints the command, the machine, the date and Markdown tables of the figures.
"""

from __future__ import annotations

import argparse
import datetime
import io
import itertools
import shlex
import sys
import time
from collections.abc import Callable

import torch
from diffusers import DDIMScheduler
from torch import nn

from ditblocks import DiTUpdateFormer, TimestepEmbedder
from ditblocks.guidance import classifier_free_guidance, sample
from ditblocks.text import TextConditioner
from reporting import describe_machine, print_table, spread, synchronize

HIDDEN_SIZE = 384
NUM_HEADS = 6
DEPTH = 6
BATCH = 8
POINTS = 64
STEPS = 16
CHANNELS = 2
CONTEXT_TOKENS = 220  # scene tokens followed by text tokens, as in the conditional pass
TEXT_TOKENS = 24  # replaced by one null token in the unconditional pass
GUIDANCE_SCALE = 2.0
SEED = 0

TEXT_BATCH = 64
DISTINCT_INSTRUCTIONS = 8
TEXT_MAX_LENGTH = 32
VERBS = ["pick up", "push", "open", "close", "move", "rotate", "lift", "slide", "grab", "put down"]
OBJECTS = ["the red cup", "the drawer", "the blue block", "the lid", "the sponge", "the bottle"]
PLACES = ["on the table", "to the left", "into the bin", "slowly", "next to the plate", ""]


# ---------------------------------------------------------------------------------------------
# Guidance: batched 2B call against two calls of B per step
# ---------------------------------------------------------------------------------------------


class TrackDenoiser(nn.Module):
    """DiTUpdateFormer with a timestep embedder, called as ``denoise(x, t, cond)``."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(SEED)
        self.timestep_embedder = TimestepEmbedder(HIDDEN_SIZE)
        self.model = DiTUpdateFormer(
            depth=DEPTH,
            hidden_size=HIDDEN_SIZE,
            num_heads=NUM_HEADS,
            input_dim=CHANNELS,
            output_dim=CHANNELS,
        )
        # adaLN-Zero starts every block as the identity and the output at zero. Random
        # modulation makes the prediction depend on every block, as in a trained model.
        with torch.no_grad():
            for name, parameter in self.model.named_parameters():
                if "adaLN_modulation" in name:
                    parameter.normal_(0.0, 0.02)

    def forward(self, x: torch.Tensor, t: torch.Tensor, cond: dict[str, torch.Tensor]):
        c = self.timestep_embedder(t)
        return self.model(x, cond["context"], c, context_mask=cond["context_mask"])


def make_conditions(device: str) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    """Return conditional (B, 220) and unconditional (B, 197) contexts with key-padding masks."""
    generator = torch.Generator().manual_seed(SEED + 1)
    scene_tokens = CONTEXT_TOKENS - TEXT_TOKENS
    scene = torch.randn(BATCH, scene_tokens, HIDDEN_SIZE, generator=generator)
    text = torch.randn(BATCH, TEXT_TOKENS, HIDDEN_SIZE, generator=generator)
    null = torch.randn(1, 1, HIDDEN_SIZE, generator=generator).expand(BATCH, 1, HIDDEN_SIZE)

    # Sample b keeps TEXT_TOKENS - 2 * b text tokens, like instructions of different lengths.
    text_lengths = torch.tensor([TEXT_TOKENS - 2 * b for b in range(BATCH)])
    text_mask = torch.arange(TEXT_TOKENS)[None, :] < text_lengths[:, None]
    scene_mask = torch.ones(BATCH, scene_tokens, dtype=torch.bool)

    cond = {
        "context": torch.cat([scene, text], dim=1).to(device),
        "context_mask": torch.cat([scene_mask, text_mask], dim=1).to(device),
    }
    uncond = {
        "context": torch.cat([scene, null], dim=1).to(device),
        "context_mask": torch.cat([scene_mask, torch.ones(BATCH, 1, dtype=torch.bool)], 1).to(
            device
        ),
    }
    return cond, uncond


def make_samplers(
    model: TrackDenoiser, num_inference_steps: int, device: str
) -> dict[str, Callable[[], torch.Tensor]]:
    """Return the batched and two-pass sampling runs, each drawing the same initial noise."""
    cond, uncond = make_conditions(device)
    shape = (BATCH, POINTS, STEPS, CHANNELS)

    def scheduler() -> DDIMScheduler:
        return DDIMScheduler(timestep_spacing="trailing", clip_sample=False)

    def generator() -> torch.Generator:
        return torch.Generator(device=device).manual_seed(SEED + 2)

    def batched() -> torch.Tensor:
        return sample(
            model,
            scheduler(),
            shape,
            cond,
            uncond,
            guidance_scale=GUIDANCE_SCALE,
            num_inference_steps=num_inference_steps,
            generator=generator(),
        )

    def two_passes_denoise(x: torch.Tensor, t: torch.Tensor, condition: dict) -> torch.Tensor:
        cond_output = model(x, t, condition)
        uncond_output = model(x, t, uncond)
        return classifier_free_guidance(cond_output, uncond_output, GUIDANCE_SCALE)

    def two_passes() -> torch.Tensor:
        # guidance_scale=1 makes the sampler call the wrapper once per step with cond only.
        return sample(
            two_passes_denoise,
            scheduler(),
            shape,
            cond,
            num_inference_steps=num_inference_steps,
            generator=generator(),
        )

    return {"batched": batched, "two_passes": two_passes}


# ---------------------------------------------------------------------------------------------
# Text encoding: with and without the cache
# ---------------------------------------------------------------------------------------------


def build_tokenizer():
    """Train a small SentencePiece unigram model on instructions and return a T5Tokenizer."""
    import sentencepiece
    from transformers import T5Tokenizer

    corpus = [f"{v} {o} {p}".strip() for v, o, p in itertools.product(VERBS, OBJECTS, PLACES)]
    model = io.BytesIO()
    sentencepiece.SentencePieceTrainer.train(
        sentence_iterator=iter(corpus),
        model_writer=model,
        vocab_size=200,
        hard_vocab_limit=False,
        model_type="unigram",
        pad_id=0,
        eos_id=1,
        unk_id=2,
        bos_id=-1,
        num_threads=1,
        minloglevel=2,
    )
    processor = sentencepiece.SentencePieceProcessor(model_proto=model.getvalue())
    pieces = [(processor.id_to_piece(i), processor.get_score(i)) for i in range(len(processor))]
    return T5Tokenizer(vocab=pieces, extra_ids=0)


def build_conditioner(tokenizer, cache_size: int, device: str) -> TextConditioner:
    """Return a TextConditioner over a tiny randomly initialised UMT5 encoder."""
    from transformers import UMT5Config, UMT5EncoderModel

    torch.manual_seed(SEED)
    config = UMT5Config(
        vocab_size=len(tokenizer),
        d_model=128,
        d_kv=32,
        d_ff=256,
        num_layers=2,
        num_heads=4,
    )
    return TextConditioner(
        HIDDEN_SIZE,
        "tiny-umt5",
        TEXT_MAX_LENGTH,
        tokenizer=tokenizer,
        encoder=UMT5EncoderModel(config),
        cache_size=cache_size,
        device=device,
    )


def make_text_batch() -> list[str]:
    combinations = list(itertools.product(VERBS, OBJECTS, PLACES))
    distinct = [f"{v} {o} {p}".strip() for v, o, p in combinations[::7][:DISTINCT_INSTRUCTIONS]]
    return [distinct[i % DISTINCT_INSTRUCTIONS] for i in range(TEXT_BATCH)]


def make_encoders(device: str) -> dict[str, Callable[[], torch.Tensor]]:
    tokenizer = build_tokenizer()
    uncached = build_conditioner(tokenizer, cache_size=0, device=device)
    cached = build_conditioner(tokenizer, cache_size=1024, device=device)
    texts = make_text_batch()

    def without_cache() -> torch.Tensor:
        with torch.no_grad():
            return uncached.encode(texts)[0]

    def cold_cache() -> torch.Tensor:
        cached.clear_cache()
        with torch.no_grad():
            return cached.encode(texts)[0]

    def warm_cache() -> torch.Tensor:
        with torch.no_grad():
            return cached.encode(texts)[0]

    return {"without_cache": without_cache, "cold_cache": cold_cache, "warm_cache": warm_cache}


# ---------------------------------------------------------------------------------------------
# Timing and report
# ---------------------------------------------------------------------------------------------


def time_alternating(
    runs: dict[str, Callable[[], torch.Tensor]], repeats: int, device: str
) -> tuple[dict[str, torch.Tensor], dict[str, list[float]]]:
    """Time each run ``repeats`` times, alternating, after one warm-up round.

    Returns the outputs of the warm-up round, for agreement checks, and the times in seconds.
    """
    outputs = {name: run() for name, run in runs.items()}
    times: dict[str, list[float]] = {name: [] for name in runs}
    for _ in range(repeats):
        for name, run in runs.items():
            synchronize(device)
            start = time.perf_counter()
            run()
            synchronize(device)
            times[name].append(time.perf_counter() - start)
    return outputs, times


def ratio_spread(times: dict[str, list[float]], slow: str, fast: str) -> str:
    ratios = [s / f for s, f in zip(times[slow], times[fast], strict=True)]
    return spread(ratios)


def benchmark_guidance(args: argparse.Namespace) -> list[tuple[str, str]]:
    model = TrackDenoiser().to(args.device).eval()
    runs = make_samplers(model, args.num_inference_steps, args.device)

    outputs, times = time_alternating(runs, args.repeats, args.device)
    difference = (outputs["batched"] - outputs["two_passes"]).abs().max().item()
    return [
        ("Max abs difference, batched vs two passes", f"{difference:.1e}"),
        ("Sampling time, batched 2B, s: median (min-max)", spread(times["batched"])),
        ("Sampling time, two passes of B, s: median (min-max)", spread(times["two_passes"])),
        (
            "**Speed-up, two passes / batched: median of pairs (min-max)**",
            ratio_spread(times, "two_passes", "batched"),
        ),
    ]


def benchmark_text(args: argparse.Namespace) -> list[tuple[str, str]]:
    runs = make_encoders(args.device)

    outputs, times = time_alternating(runs, args.text_repeats, args.device)
    difference = (outputs["without_cache"] - outputs["cold_cache"]).abs().max().item()
    return [
        ("Max abs difference, cached vs uncached tokens", f"{difference:.1e}"),
        ("Encode time, without cache, ms: median (min-max)", spread_ms(times["without_cache"])),
        ("Encode time, cache cleared before each call, ms", spread_ms(times["cold_cache"])),
        ("Encode time, warm cache (all hits), ms", spread_ms(times["warm_cache"])),
        (
            "**Speed-up, without / cleared cache: median of pairs (min-max)**",
            ratio_spread(times, "without_cache", "cold_cache"),
        ),
        (
            "Speed-up, without / warm cache: median of pairs (min-max)",
            ratio_spread(times, "without_cache", "warm_cache"),
        ),
    ]


def spread_ms(values: list[float]) -> str:
    return spread([1000 * value for value in values])


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--device", choices=["cpu", "cuda"], default="cpu", help="Device to run on (default: cpu)."
    )
    parser.add_argument(
        "--num-inference-steps",
        type=int,
        default=20,
        help="DDIM steps per sampling run (default: 20).",
    )
    parser.add_argument(
        "--repeats",
        type=int,
        default=5,
        help="Timed sampling runs per variant, alternating batched and two passes (default: 5).",
    )
    parser.add_argument(
        "--text-repeats",
        type=int,
        default=30,
        help="Timed encode calls per text variant (default: 30).",
    )
    parser.add_argument(
        "--skip",
        choices=["guidance", "text"],
        action="append",
        default=[],
        help="Leave out one measurement; may be given twice.",
    )
    args = parser.parse_args(argv)

    for name in ("num_inference_steps", "repeats", "text_repeats"):
        if getattr(args, name) < 1:
            option = "--" + name.replace("_", "-")
            parser.error(f"{option} must be at least 1, got {getattr(args, name)}.")
    if args.device == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda was requested but torch.cuda.is_available() is False.")
    return args


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)

    print(f"Command: python {shlex.join(sys.argv)}")
    print(f"Machine: {describe_machine(args.device)}")
    print(f"Date: {datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M} UTC")

    if "guidance" not in args.skip:
        title = (
            f"Classifier-free guidance: DiTUpdateFormer depth {DEPTH}, hidden {HIDDEN_SIZE}, "
            f"{NUM_HEADS} heads, float32 on {args.device}, B={BATCH}, N={POINTS}, T={STEPS}, "
            f"context {CONTEXT_TOKENS} tokens (unconditional {CONTEXT_TOKENS - TEXT_TOKENS + 1}) "
            f"with key-padding mask, DDIM trailing, steps per run: {args.num_inference_steps}, "
            f"guidance {GUIDANCE_SCALE}, {args.repeats} alternating rounds"
        )
        print_table(title, benchmark_guidance(args))

    if "text" not in args.skip:
        title = (
            f"Text encoding: tiny random UMT5 (d_model 128, 2 layers), batch {TEXT_BATCH} with "
            f"{DISTINCT_INSTRUCTIONS} distinct instructions, {args.text_repeats} alternating "
            "rounds"
        )
        print_table(title, benchmark_text(args))


if __name__ == "__main__":
    main()
