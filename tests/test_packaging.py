"""What `pip install .` puts in site-packages, and that our kernels never shadow Hugging Face's.

The Pallas kernels live in the checkout's top-level `kernels/` folder and install as
`pmd_jax.kernels`; `experiments/` stays in the checkout. A distribution named `kernels` (Hugging
Face's, which transformers imports) must keep its import name, in an install and when code runs
from the checkout's root.
"""

from __future__ import annotations

import pathlib
import subprocess
import sys

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def installed(tmp_path_factory) -> pathlib.Path:
    """The package as `pip install .` lays it out (no dependencies, no build isolation)."""
    target = tmp_path_factory.mktemp("site")
    build = tmp_path_factory.mktemp("build")
    subprocess.run(
        [sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--no-build-isolation",
         "--target", str(target), str(ROOT)],
        check=True, timeout=600, cwd=build,
    )  # fmt: skip
    return target


def test_install_has_pmd_jax_only_with_kernels_and_presets_inside(installed):
    top = {p.name for p in installed.iterdir() if not p.name.endswith(".dist-info")}
    assert top - {"bin"} == {"pmd_jax"}, top
    assert (installed / "pmd_jax" / "kernels" / "distill_divergence.py").is_file()
    assert list((installed / "pmd_jax" / "model" / "presets").glob("qwen3-8b.json"))


def _fake_hf_kernels(root: pathlib.Path) -> pathlib.Path:
    """A stand-in for Hugging Face's `kernels` distribution: a regular package marking itself."""
    package = root / "hf" / "kernels"
    package.mkdir(parents=True)
    (package / "__init__.py").write_text("WHOSE = 'huggingface'\n")
    return root / "hf"


def _imports(cwd: pathlib.Path, pythonpath: list[pathlib.Path]) -> str:
    code = (
        "import kernels, pmd_jax.kernels.distill_divergence as d; print(kernels.WHOSE, d.__name__)"
    )
    env = {"PYTHONPATH": ":".join(map(str, pythonpath)), "JAX_PLATFORMS": "cpu", "PATH": "/usr/bin"}
    out = subprocess.run(
        [sys.executable, "-c", code], cwd=cwd, env=env, capture_output=True, text=True, timeout=300
    )
    assert out.returncode == 0, out.stderr
    return out.stdout.strip()


def test_hf_kernels_keeps_its_name_beside_an_install(installed, tmp_path):
    hf = _fake_hf_kernels(tmp_path)
    assert _imports(tmp_path, [installed, hf]) == "huggingface pmd_jax.kernels.distill_divergence"


def test_hf_kernels_keeps_its_name_when_run_from_the_checkout_root(tmp_path):
    # `python -m ...` from the root puts the root first on sys.path, before site-packages.
    hf = _fake_hf_kernels(tmp_path)
    assert not (ROOT / "kernels" / "__init__.py").exists()
    assert _imports(ROOT, [ROOT, hf]) == "huggingface pmd_jax.kernels.distill_divergence"
