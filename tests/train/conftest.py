
import pytest
import torch

from elmo_fast.testing import small_options

from tests.conftest import shared_data


def lm_corpus(name: str) -> str:
    """A file of ../shared/data/lm_corpus (ELMO_FAST_SHARED_DATA overrides the location); skips,
    visibly and with the reason, when the development data is not there."""
    return shared_data("lm_corpus", name)


def slice_lines(src: str, dst, start: int, n: int) -> str:
    with open(src, encoding="utf-8") as f:
        lines = [next(f) for _ in range(start + n)][start:]
    with open(dst, "w", encoding="utf-8") as f:
        f.writelines(lines)
    return str(dst)


@pytest.fixture
def lm_options() -> dict:
    """A biLM small enough to train for a few hundred steps inside a test."""
    return small_options(dim=64, proj=32, n_highway=1, filters=((1, 8), (2, 8), (3, 16), (4, 16)), embed=8)


@pytest.fixture
def corpus_slice(tmp_path):
    """(train, valid) slices of lm_corpus: 4,000 train lines, 150 valid lines."""
    train = slice_lines(lm_corpus("train.txt"), tmp_path / "train.txt", 0, 4000)
    valid = slice_lines(lm_corpus("valid.txt"), tmp_path / "valid.txt", 0, 150)
    return train, valid


@pytest.fixture
def tiny_text(tmp_path):
    """Synthetic text (no shared data needed) for the fast mechanics tests."""
    import random

    rng = random.Random(0)
    words = [f"w{i}" for i in range(40)] + ["the", "a", ",", "."]
    lines = [" ".join(rng.choice(words) for _ in range(rng.randint(1, 14))) for _ in range(120)]
    path = tmp_path / "text.txt"
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return str(path)


@pytest.fixture(autouse=True)
def _one_thread():
    """These models are tiny: one intra-op thread is faster, and immune to a busy shared host
    (oversubscribed OpenMP threads made the 250-step run ~10x slower there)."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)
