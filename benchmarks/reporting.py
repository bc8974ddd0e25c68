"""Reporting helpers shared by the benchmark scripts: machine description, spreads, tables."""

from __future__ import annotations

import os
import platform
import statistics
import subprocess

import torch


def synchronize(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


def spread(values: list[float]) -> str:
    """Format the median with the min-max range."""
    return f"{statistics.median(values):.3g} ({min(values):.3g}-{max(values):.3g})"


def describe_machine(device: str) -> str:
    model_name = platform.processor() or "unknown CPU"
    try:
        lscpu = subprocess.run(["lscpu"], capture_output=True, text=True, check=True).stdout
        for line in lscpu.splitlines():
            if line.startswith("Model name:"):
                model_name = line.split(":", 1)[1].strip()
    except (OSError, subprocess.CalledProcessError):
        pass
    text = (
        f"{model_name}, {os.cpu_count()} logical CPUs, {torch.get_num_threads()} torch threads, "
        f"torch {torch.__version__}, Python {platform.python_version()}"
    )
    if device == "cuda":
        text += f", {torch.cuda.get_device_name()}"
    return text + f", load average {os.getloadavg()[0]:.2f} at start"


def print_table(title: str, rows: list[tuple[str, str]]) -> None:
    print(f"\n{title}\n")
    print("| figure | value |")
    print("| --- | --- |")
    for name, value in rows:
        print(f"| {name} | {value} |")
