"""End-to-end tests of examples/train_tracker.py on a handful of rendered episodes.

Every test trains a tiny tracker (hidden 32, one block, random ViT) for a few steps on 64x64
episodes rendered once per session by the MuJoCo generator.
"""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from tracker.config import load_config
from tracker.metrics_log import read_records
from tracker.model import DiffusionIntentTracker
from tracker.training import NonFiniteLossError, StepBatchSampler, train

REPO = Path(__file__).resolve().parents[2]
SCRIPT = REPO / "examples" / "train_tracker.py"
CFG_CONFIG = REPO / "examples" / "configs" / "train_tracker_cfg.yaml"
SUBPROCESS_TIMEOUT = 600

TINY_MODEL = [
    "model.overrides.hidden_size=32",
    "model.overrides.num_heads=2",
    "model.overrides.depth=1",
    "model.overrides.vit_pretrained=false",
    "model.overrides.max_text_length=16",
]
TINY_EVAL = [
    "eval.num_episodes=2",
    "eval.batch_size=2",
    "eval.num_inference_steps=2",
    "eval.num_plot_episodes=2",
]


@pytest.fixture(scope="module")
def episodes_dir(tmp_path_factory) -> Path:
    """Render 8 training, 2 validation and 2 held-out episodes at 64x64 once."""
    from tracker.generate import main as generate_main

    folder = tmp_path_factory.mktemp("episodes")
    generate_main(
        [
            "--out", str(folder),
            "--train", "8",
            "--val", "2",
            "--heldout", "2",
            "--workers", "2",
            "--image-size", "64",
            "--steps", "8",
            "--points", "16",
        ]
    )
    return folder


def data_overrides(episodes_dir: Path) -> list[str]:
    # The tiny episodes store 16 points, fewer than the default config samples for evaluation.
    return [
        f"data.dir={episodes_dir}",
        "data.generate_if_missing=false",
        "data.num_points=8",
        "eval.num_points=8",
    ]


def script_env() -> dict[str, str]:
    env = dict(os.environ)
    env.setdefault("MUJOCO_GL", "egl")
    env["HF_HUB_OFFLINE"] = "1"
    env["TOKENIZERS_PARALLELISM"] = "false"
    return env


def run_script(args: list[str], timeout: float = SUBPROCESS_TIMEOUT) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, str(SCRIPT), *args],
        cwd=REPO,
        env=script_env(),
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


def train_losses(output_dir: Path) -> list[tuple[int, float, float]]:
    records = read_records(output_dir / "metrics.jsonl")
    return [
        (record["step"], record["total_loss"], record["track_loss"])
        for record in records
        if record["split"] == "train"
    ]


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


# ---------------------------------------------------------------------------
# Data order
# ---------------------------------------------------------------------------


def test_step_sampler_batch_depends_only_on_step():
    full = list(StepBatchSampler(10, 2, seed=3, start_step=0, total_steps=12))
    resumed = list(StepBatchSampler(10, 2, seed=3, start_step=7, total_steps=12))

    assert resumed == full[7:]


def test_step_sampler_covers_each_epoch_once_per_process():
    batches = [
        list(StepBatchSampler(12, 2, seed=0, start_step=0, total_steps=3, num_processes=2, rank=r))
        for r in range(2)
    ]
    indices = [index for rank in batches for batch in rank for _, index in batch]

    assert sorted(indices) == list(range(12))
    assert {epoch for rank in batches for batch in rank for epoch, _ in batch} == {0}


def test_step_sampler_rejects_batch_larger_than_split():
    with pytest.raises(ValueError, match=re.escape("train.batch_size")):
        StepBatchSampler(3, 4, seed=0, start_step=0, total_steps=1)


# ---------------------------------------------------------------------------
# Whole runs
# ---------------------------------------------------------------------------


def test_train_script_smoke_run_with_cfg(episodes_dir, tmp_path):
    output = tmp_path / "run"
    result = run_script(
        [
            "--config",
            str(CFG_CONFIG),
            "--output-dir",
            str(output),
            *data_overrides(episodes_dir),
            *TINY_MODEL,
            *TINY_EVAL,
            "cfg.guidance_sweep=[1.0, 3.0]",
            "train.max_steps=4",
            "train.batch_size=2",
            "train.log_every_steps=1",
            "eval.every_steps=2",
            "checkpoint.every_steps=2",
        ]
    )
    assert result.returncode == 0, result.stderr[-4000:]

    metrics = json.loads((output / "metrics.json").read_text())
    for split in ("val", "heldout"):
        assert metrics[split]["episodes"] == 2
        assert "ade_moving" in metrics[split]
        assert "right_object_rate" in metrics[split]
        assert "wrong_vs_right_instruction_ade_all" in metrics[split]
    assert set(metrics["guidance_sweep"]["val"]) == {"1.0", "2.0", "3.0"}

    for name in ("tracks_val", "tracks_heldout", "loss_curve", "guidance_sweep_val"):
        picture = output / "pictures" / f"{name}.png"
        assert picture.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", name

    checkpoints = sorted(p.name for p in (output / "checkpoints").iterdir())
    assert checkpoints == ["step_00000002", "step_00000004"]
    for name in checkpoints:
        saved = load_config(output / "checkpoints" / name / "config.yaml")
        assert saved.enable_cfg is True
        assert saved.train.max_steps == 4

    released = DiffusionIntentTracker.from_pretrained(output / "model")
    assert released.config.trained_with_cfg is True
    assert released.config.hidden_size == 32

    records = read_records(output / "metrics.jsonl")
    assert [r["step"] for r in records if r["split"] == "train"] == [1, 2, 3, 4]
    assert [r["step"] for r in records if r["split"] == "val"] == [2]
    assert [r["step"] for r in records if r["split"] == "final_val"] == [4]
    assert [r["step"] for r in records if r["split"] == "final_heldout"] == [4]
    assert "released model" in result.stderr


def test_unknown_override_exits_with_closest_key(tmp_path):
    result = run_script(["--output-dir", str(tmp_path), "train.max_step=3"], timeout=120)

    assert result.returncode == 2
    assert "'train.max_step'" in result.stderr
    assert "Did you mean 'train.max_steps'" in result.stderr


def test_resume_after_sigkill_logs_same_losses(episodes_dir, tmp_path):
    common = [
        *data_overrides(episodes_dir),
        *TINY_MODEL,
        "data.heldout_file=",
        "train.max_steps=8",
        "train.batch_size=2",
        "train.warmup_steps=2",
        "train.log_every_steps=1",
        "eval.every_steps=0",
        "eval.at_end=false",
        "checkpoint.every_steps=2",
        "checkpoint.keep_last=10",
    ]
    straight_dir, killed_dir = tmp_path / "straight", tmp_path / "killed"
    command = [sys.executable, str(SCRIPT)]
    popen_options = dict(
        cwd=REPO, env=script_env(), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True
    )
    straight = subprocess.Popen(
        [*command, "--output-dir", str(straight_dir), *common], **popen_options
    )
    killed = subprocess.Popen([*command, "--output-dir", str(killed_dir), *common], **popen_options)

    first_checkpoint = killed_dir / "checkpoints" / "step_00000002"
    deadline = time.monotonic() + SUBPROCESS_TIMEOUT
    while not first_checkpoint.exists() and killed.poll() is None:
        assert time.monotonic() < deadline, "no checkpoint appeared in time"
        time.sleep(0.05)
    killed.send_signal(signal.SIGKILL)
    killed.communicate(timeout=60)
    assert killed.returncode == -signal.SIGKILL
    assert not (killed_dir / "model").exists(), "the run finished before it was killed"

    resumed = run_script(["--resume", "--output-dir", str(killed_dir), *common])
    _, straight_stderr = straight.communicate(timeout=SUBPROCESS_TIMEOUT)
    assert straight.returncode == 0, straight_stderr[-4000:]
    assert resumed.returncode == 0, resumed.stderr[-4000:]
    assert "resumed from" in resumed.stderr

    expected = train_losses(straight_dir)
    assert [step for step, *_ in expected] == list(range(1, 9))
    assert train_losses(killed_dir) == expected

    # The released model holds the EMA weights, so equal files mean the EMA resumed exactly.
    straight_weights = load_file(straight_dir / "model" / "model.safetensors")
    resumed_weights = load_file(killed_dir / "model" / "model.safetensors")
    assert straight_weights.keys() == resumed_weights.keys()
    for name, tensor in straight_weights.items():
        assert torch.equal(tensor, resumed_weights[name]), name


def test_two_process_cpu_run_with_unfreezing(episodes_dir, tmp_path):
    output = tmp_path / "ddp"
    command = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--nproc_per_node",
        "2",
        "--master_addr",
        "127.0.0.1",
        "--master_port",
        str(free_port()),
        str(SCRIPT),
        "--output-dir",
        str(output),
        *data_overrides(episodes_dir),
        *TINY_MODEL,
        *TINY_EVAL,
        "data.heldout_file=",
        "train.max_steps=4",
        "train.batch_size=2",
        "train.log_every_steps=1",
        "train.unfreeze_after=0.5",
        "eval.every_steps=0",
        "checkpoint.every_steps=2",
    ]
    env = script_env()
    env["OMP_NUM_THREADS"] = "1"
    # What `accelerate launch --cpu` sets: the gloo backend on CPU even where a GPU exists.
    env["ACCELERATE_USE_CPU"] = "true"
    result = subprocess.run(
        command,
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=SUBPROCESS_TIMEOUT,
        check=False,
    )
    assert result.returncode == 0, result.stderr[-6000:]
    assert "2 process(es)" in result.stderr
    assert "unfreezing the ViT" in result.stderr

    records = [r for r in read_records(output / "metrics.jsonl") if r["split"] == "train"]
    assert [r["step"] for r in records] == [1, 2, 3, 4]
    assert [r["vision_trainable"] for r in records] == [False, False, True, True]
    assert (output / "checkpoints" / "step_00000004" / "random_states_1.pkl").is_file()
    assert (output / "model" / "model.safetensors").is_file()


def test_non_finite_loss_names_step_and_episodes(episodes_dir, tmp_path):
    # A huge learning rate without clipping blows the weights up after the first step.
    config = load_config(
        None,
        [
            *data_overrides(episodes_dir),
            *TINY_MODEL,
            f"output_dir={tmp_path}",
            "data.heldout_file=",
            "train.max_steps=5",
            "train.batch_size=2",
            "train.learning_rate=1e30",
            "train.warmup_steps=0",
            "train.max_grad_norm=0",
            "eval.every_steps=0",
            "checkpoint.every_steps=0",
        ],
    )

    with pytest.raises(NonFiniteLossError) as error:
        train(config)

    message = str(error.value)
    assert "non-finite loss at step 2" in message
    assert "train-0000" in message
