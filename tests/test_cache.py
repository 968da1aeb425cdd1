import json

import numpy as np
import pytest
import torch

from glai import GLAIMLP, PatternCache, PhaseError


@pytest.fixture
def frozen():
    torch.manual_seed(0)
    model = GLAIMLP(9, [33, 70], 4).freeze()
    data = torch.randn(101, 9)
    return model, data


def test_build_matches_model_patterns_and_forward(frozen):
    model, data = frozen
    cache = PatternCache.build(model, data, batch_size=17)
    assert len(cache) == 101 and cache.bytes_per_sample == 4 * (2 + 3)
    idx = torch.tensor([0, 5, 100, 33])
    for a, b in zip(cache[idx], model.patterns(data[idx])):
        assert torch.equal(a, b)
    torch.testing.assert_close(model(data[idx], patterns=cache.lookup(idx)), model(data[idx]), rtol=0, atol=0)
    single = cache[7]
    assert [p.shape for p in single] == [(2,), (3,)]


def test_indexing_like_a_tensor_of_samples(frozen):
    model, data = frozen
    cache = PatternCache.build(model, data)
    mask = torch.zeros(101, dtype=torch.bool)
    mask[[3, 50, 99]] = True
    for index, rows in [(mask, data[mask]), (-1, data[-1]), (torch.tensor([-2, 0]), data[[-2, 0]])]:
        for a, b in zip(cache[index], model.patterns(rows)):
            assert torch.equal(a, b)
    with pytest.raises(IndexError, match="boolean index did not match"):
        cache[mask[:5]]
    with pytest.raises(IndexError, match="out of bounds"):
        cache[torch.tensor([101])]
    with pytest.raises(TypeError, match="indexed by sample only, got a tuple"):
        cache[1, 2]


def test_design_size_example():
    model = GLAIMLP(4, [1024, 1024], 2).freeze()
    cache = PatternCache.build(model, torch.randn(3, 4))
    assert cache.bytes_per_sample == 256


def test_dataset_of_tuples(frozen):
    model, data = frozen
    dataset = torch.utils.data.TensorDataset(data, torch.zeros(101))
    a = PatternCache.build(model, dataset, batch_size=40)
    b = PatternCache.build(model, data)
    assert np.array_equal(a.words, b.words)


def test_memory_mapped_round_trip_never_unpickles(frozen, tmp_path):
    model, data = frozen
    built = PatternCache.build(model, data, path=tmp_path / "c", batch_size=50)
    loaded = PatternCache.load(tmp_path / "c", model=model)
    assert isinstance(loaded.words, np.memmap)
    assert np.array_equal(np.asarray(loaded.words), built.words)
    assert loaded.digest == model.structure_digest()
    # The array file is a plain .npy: loading with pickles forbidden works, so nothing was pickled.
    np.load(tmp_path / "c" / "patterns.npy", allow_pickle=False)
    in_memory = PatternCache.build(model, data)
    in_memory.save(tmp_path / "d")
    assert np.array_equal(PatternCache.load(tmp_path / "d", mmap=False).words, built.words)


def test_stale_or_broken_cache_is_refused(frozen, tmp_path):
    model, data = frozen
    PatternCache.build(model, data, path=tmp_path / "c")
    other = GLAIMLP(9, [33, 70], 4).freeze()
    with pytest.raises(ValueError, match="rebuild the cache"):
        PatternCache.load(tmp_path / "c", model=other)
    (tmp_path / "c" / "meta.json").write_text("{not json")
    with pytest.raises(ValueError, match="not a readable pattern cache"):
        PatternCache.load(tmp_path / "c")
    (tmp_path / "c" / "meta.json").write_text(json.dumps({"format": "something else"}))
    with pytest.raises(ValueError, match="header"):
        PatternCache.load(tmp_path / "c")
    with pytest.raises(ValueError, match="not a readable pattern cache"):
        PatternCache.load(tmp_path / "missing")


def test_needs_a_frozen_model():
    with pytest.raises(PhaseError, match="freeze"):
        PatternCache.build(GLAIMLP(3, 8, 2), torch.randn(4, 3))
    with pytest.raises(TypeError, match="expects a GLAIMLP, got Linear"):
        PatternCache.build(torch.nn.Linear(3, 2), torch.randn(4, 3))
    with pytest.raises(ValueError, match="batch_size must be an int >= 1, got 0"):
        PatternCache.build(GLAIMLP(3, 8, 2).freeze(), torch.randn(4, 3), batch_size=0)


def test_rows_must_fit_the_widths():
    with pytest.raises(ValueError, match=r"int32 \[N, 3\]"):
        PatternCache(np.zeros((4, 2), dtype=np.int32), [33, 10])
