"""Build the wheel, check its contents and import the public API from a fresh environment."""

import subprocess
import sys
import venv
import zipfile
from pathlib import Path

import pytest

import ditblocks

REPO_ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    out_dir = tmp_path_factory.mktemp("wheel")
    # No build isolation: the build backend (setuptools) is already installed, and an isolated
    # build would have to download it.
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "--no-deps",
            "--no-build-isolation",
            "-q",
            "-w",
            str(out_dir),
            str(REPO_ROOT),
        ],
        check=True,
    )
    (path,) = out_dir.glob("ditblocks-*.whl")
    return path


@pytest.mark.slow
def test_wheel_contains_package_and_py_typed_but_no_tests(wheel):
    names = zipfile.ZipFile(wheel).namelist()

    assert "ditblocks/__init__.py" in names
    assert "ditblocks/py.typed" in names
    assert not [name for name in names if name.startswith(("tests/", "examples/", "benchmarks/"))]
    assert wheel.name.startswith(f"ditblocks-{ditblocks.__version__}-")


@pytest.mark.slow
def test_wheel_installs_and_imports_in_fresh_venv(wheel, tmp_path):
    env_dir = tmp_path / "venv"
    # Reuse the installed torch through the system site-packages instead of reinstalling it.
    venv.create(env_dir, system_site_packages=True, with_pip=True)
    python = env_dir / "bin" / "python"
    subprocess.run(
        [str(python), "-m", "pip", "install", "--no-deps", "--no-index", "-q", str(wheel)],
        check=True,
    )

    script = (
        "import ditblocks, torch; "
        "from ditblocks import DiTUpdateFormer, TimestepEmbedder; "
        "m = DiTUpdateFormer(depth=1, hidden_size=16, num_heads=2); "
        "x = torch.randn(1, 3, 2, 16); "
        "assert torch.equal(m(x, torch.randn(1, 4, 16), torch.randn(1, 16)), x); "
        "print(ditblocks.__file__)"
    )
    result = subprocess.run(
        [str(python), "-c", script], cwd=tmp_path, capture_output=True, text=True, check=True
    )

    assert Path(result.stdout.strip()).is_relative_to(env_dir)
