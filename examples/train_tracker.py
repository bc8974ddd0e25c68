"""Train the DiffusionIntentTracker end to end.

With no arguments the script uses examples/configs/train_tracker.yaml: it generates the MuJoCo
episodes into data/episodes when they are missing, trains the CPU demo model, evaluates it,
draws pictures and saves the model under outputs/train_tracker. It runs unchanged under
``accelerate launch`` on GPUs and under ``torchrun`` on several CPU processes (gloo backend).

Examples:
    python examples/train_tracker.py
    python examples/train_tracker.py --config examples/configs/train_tracker_cfg.yaml
    python examples/train_tracker.py train.max_steps=200 train.batch_size=16
    python examples/train_tracker.py --resume
    accelerate launch --multi_gpu --num_processes 2 examples/train_tracker.py
    ACCELERATE_USE_CPU=true torchrun --nproc_per_node 2 examples/train_tracker.py
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

EXAMPLES_DIR = Path(__file__).resolve().parent
if str(EXAMPLES_DIR) not in sys.path:
    sys.path.insert(0, str(EXAMPLES_DIR))

from tracker.checkpoints import CONFIG_FILE, find_latest_checkpoint  # noqa: E402
from tracker.config import ConfigError, load_config  # noqa: E402
from tracker.training import CHECKPOINTS_DIR, NonFiniteLossError, train  # noqa: E402

DEFAULT_CONFIG = EXAMPLES_DIR / "configs" / "train_tracker.yaml"

logger = logging.getLogger("train_tracker")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description="Train the DiffusionIntentTracker on rendered tabletop episodes.",
        epilog="Overrides use dotted keys: train.learning_rate=1e-4 eval.every_steps=0",
    )
    parser.add_argument(
        "--config",
        type=Path,
        default=None,
        help=f"YAML config file (default: {DEFAULT_CONFIG.relative_to(EXAMPLES_DIR.parent)}; "
        "with --resume, the config saved in the latest checkpoint)",
    )
    parser.add_argument(
        "--resume",
        action="store_true",
        help="continue from the latest checkpoint in <output_dir>/checkpoints",
    )
    parser.add_argument(
        "--output-dir",
        default=None,
        help="folder for checkpoints, logs, metrics, pictures and the model (sets output_dir)",
    )
    parser.add_argument(
        "overrides", nargs="*", metavar="KEY=VALUE", help="config overrides with dotted keys"
    )
    return parser.parse_args(argv)


def resolve_config_path(args: argparse.Namespace) -> Path:
    """Pick the config file: --config, else the resumed checkpoint's config, else the default."""
    if args.config is not None or not args.resume:
        return args.config or DEFAULT_CONFIG

    # Resolve the output folder from the overrides and the default file first.
    probe = load_config(DEFAULT_CONFIG, output_dir_overrides(args))
    latest = find_latest_checkpoint(Path(probe.output_dir) / CHECKPOINTS_DIR)
    if latest is not None and (latest / CONFIG_FILE).is_file():
        return latest / CONFIG_FILE
    return DEFAULT_CONFIG


def output_dir_overrides(args: argparse.Namespace) -> list[str]:
    overrides = [o for o in args.overrides if o.split("=", 1)[0].strip() == "output_dir"]
    if args.output_dir is not None:
        overrides.append(f"output_dir={args.output_dir}")
    return overrides


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    overrides = list(args.overrides)
    if args.output_dir is not None:
        overrides.append(f"output_dir={args.output_dir}")

    try:
        config_path = resolve_config_path(args)
        config = load_config(config_path, overrides)
    except ConfigError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    logger.info("config: %s, overrides: %s", config_path, " ".join(overrides) or "none")

    try:
        result = train(config, resume=args.resume)
    except NonFiniteLossError as error:
        logger.error("%s", error)
        return 1

    if result.metrics:
        for split in ("val", "heldout"):
            if split in result.metrics:
                values = result.metrics[split]
                print(
                    f"{split}: moving-point ADE {values['ade_moving']:.2f} px "
                    f"(zero motion {values['zero_motion_ade_moving']:.2f}), "
                    f"right object {100 * values.get('right_object_rate', float('nan')):.0f}%, "
                    f"wrong/right instruction ADE "
                    f"{values['wrong_vs_right_instruction_ade_all']:.2f}"
                )
    return 0


if __name__ == "__main__":
    sys.exit(main())
