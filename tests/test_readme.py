"""The README acts as written: every command in its bash blocks is run in a form that does no
work (`make -n`, `--help`, `train --dry-run`), its Python example parses, and no link in the
README or docs/ leaves the repository."""

from __future__ import annotations

import os
import pathlib
import re
import shlex
import subprocess
import sys

import pytest
from conftest import GSM8K_DIR

ROOT = pathlib.Path(__file__).resolve().parents[1]
README = ROOT / "README.md"


def _blocks(language: str) -> list[str]:
    return re.findall(rf"```{language}\n(.*?)```", README.read_text(), flags=re.S)


def _commands() -> list[str]:
    commands = []
    for block in _blocks("bash"):
        for line in block.splitlines():
            line = line.split("  #")[0].strip()
            if line and not line.startswith("#"):
                commands.append(line)
    return commands


def _run(argv: list[str], **kwargs) -> subprocess.CompletedProcess:
    env = {**os.environ, "JAX_PLATFORMS": "cpu"}
    if (GSM8K_DIR / "train.jsonl").exists():
        env.setdefault("PMD_GSM8K_DIR", str(GSM8K_DIR))
    return subprocess.run(
        argv, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600, **kwargs
    )


def test_readme_is_short_and_its_quickstart_is_there():
    assert len(README.read_text().splitlines()) <= 170
    commands = _commands()
    for expected in ("make install", "make train EXP=tiny WORKDIR=/tmp/tiny", "make test"):
        assert any(c.startswith(expected) for c in commands), expected


def _dry_form(command: str, tmp_path: pathlib.Path) -> list[str]:
    """The command made to do no work (what the test runs)."""
    words = shlex.split(command)
    if words[0] == "make":
        target = words[1]
        assigns = dict(w.split("=", 1) for w in words[2:])
        if target == "train":
            exp = assigns.get("EXP", "arith")
            return [sys.executable, "-m", "pmd_jax.train", "--exp", exp, "--workdir",
                    str(tmp_path / "run"), *shlex.split(assigns.get("ARGS", "")), "--dry-run"]  # fmt: skip
        return ["make", "-n", *words[1:]]
    if words[0] == ".venv/bin/python" and words[1] == "-m":
        if words[2] == "pmd_jax.train":
            return [sys.executable, *words[1:]]
        return [sys.executable, "-m", words[2], "--help"]
    raise AssertionError(f"README command of an unknown form: {command}")


@pytest.mark.parametrize("command", _commands())
def test_readme_command_runs_as_written(command, tmp_path):
    if "gsm8k" in command and not (GSM8K_DIR / "train.jsonl").exists():
        pytest.skip(f"GSM8K jsonl not found at {GSM8K_DIR} (set PMD_GSM8K_DIR)")
    argv = _dry_form(command, tmp_path)
    out = _run(argv)
    assert out.returncode == 0, f"{command}\n-> {argv}\n{out.stdout[-2000:]}\n{out.stderr[-3000:]}"
    if "--dry-run" in argv:
        assert not (tmp_path / "run").exists() or not any((tmp_path / "run").iterdir())


def test_readme_python_example_parses_and_names_real_functions():
    import ast
    import importlib

    (example,) = _blocks("python")
    imports = [n for n in ast.walk(ast.parse(example)) if isinstance(n, ast.ImportFrom)]
    assert imports, "the README example imports nothing from pmd_jax"
    for node in imports:
        module = importlib.import_module(node.module)
        for alias in node.names:
            assert callable(getattr(module, alias.name, None)), f"{node.module}.{alias.name}"


@pytest.mark.slow
def test_readme_python_example_runs():
    (example,) = _blocks("python")
    out = _run([sys.executable, "-c", example])
    assert out.returncode == 0, out.stderr[-3000:]
    assert out.stdout.strip()


def _links(path: pathlib.Path) -> list[str]:
    return re.findall(r"\]\(([^)\s]+)\)", path.read_text())


@pytest.mark.parametrize(
    "page", [README, ROOT / "BENCHMARKS.md", *sorted((ROOT / "docs").glob("*.md"))], ids=str
)
def test_links_stay_inside_the_repository_and_resolve(page):
    for link in _links(page):
        assert not re.match(r"[a-z]+://", link), f"{page.name}: {link} leaves the repository"
        target = (page.parent / link.split("#")[0]).resolve()
        assert target.is_relative_to(ROOT), f"{page.name}: {link} points outside the repository"
        assert target.exists(), f"{page.name}: {link} does not exist"
    assert "../shared" not in page.read_text(), f"{page.name} names ../shared"
