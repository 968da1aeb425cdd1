import hashlib
import io
import json
import pickle

import numpy as np
import pytest
import torch

from glai import GLAIMLP, PatternCache, PatternDataset, PhaseError, cache_files
from glai import cache as cache_module
from glai.structure_check import CachedPatterns


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


# ----------------------------------------------------------------- where the rows live


def _no_host_transfer(monkeypatch):
    """Make every way of reading a tensor back to the host fail (on a GPU each would synchronise)."""

    def refuse(*args, **kwargs):
        raise AssertionError("a lookup on the cache's device read a tensor back to the host")

    for name in ("cpu", "numpy", "item", "tolist"):
        monkeypatch.setattr(torch.Tensor, name, refuse)


def test_device_resident_cache_looks_up_without_reading_back(frozen, monkeypatch):
    model, data = frozen
    host = PatternCache.build(model, data)
    resident = host.to("cpu")
    assert isinstance(resident.words, torch.Tensor) and resident.to("cpu") is resident
    assert resident.device == torch.device("cpu") and torch.equal(
        resident.words, torch.from_numpy(host.words)
    )
    idx = torch.tensor([[4, 100], [0, -1]])
    expected = host.lookup(idx)
    _no_host_transfer(monkeypatch)
    got = resident.lookup(idx)
    for a, b in zip(got, expected):
        assert a.is_contiguous() and torch.equal(a, b) and a.shape == (2, 2, b.shape[-1])
    y = model(data[idx], patterns=got)  # the digest check reads no tensor back either
    monkeypatch.undo()
    assert [p.shape for p in resident.lookup([])] == [p.shape for p in host.lookup([])] == [(0, 2), (0, 3)]
    torch.testing.assert_close(y, model(data[idx]), rtol=0, atol=0)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_cache_lookup_does_not_sync_and_host_batches_are_pinned(frozen, monkeypatch):
    model, data = frozen
    model, data = model.cuda(), data.cuda()
    host = PatternCache.build(model, data)
    resident = host.to("cuda")
    idx = torch.randint(0, len(host), (33,), device="cuda")
    expected = model.patterns(data[idx])
    torch.cuda.set_sync_debug_mode("error")
    try:
        got = resident.lookup(idx)
        y = model(data[idx], patterns=got)
    finally:
        torch.cuda.set_sync_debug_mode("default")
    assert all(torch.equal(a, b) for a, b in zip(got, expected))
    torch.testing.assert_close(y, model(data[idx]))
    staged = []
    real = cache_module._host_buffer
    monkeypatch.setattr(cache_module, "_host_buffer", lambda *a: staged.append(real(*a)) or staged[-1])
    got = host.lookup(idx.cpu(), device="cuda")
    assert staged and all(t.is_pinned() for t in staged)
    assert all(torch.equal(a, b) for a, b in zip(got, expected))


def test_host_batches_are_pinned_only_for_cuda_where_it_exists(frozen, monkeypatch):
    model, data = frozen
    cache = PatternCache.build(model, data)
    asked = []
    real = cache_module._host_buffer
    monkeypatch.setattr(
        cache_module, "_host_buffer", lambda shape, pin: asked.append(pin) or real(shape, False)
    )
    cache.lookup([1, 2], device="cpu")
    assert asked == [False, False]  # one buffer a layer, never pinned for the host
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert cache_module._pin(torch.device("cuda")) and not cache_module._pin(torch.device("cpu"))
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert not cache_module._pin(torch.device("cuda"))


def test_dataloader_with_workers_gives_the_same_batches(frozen):
    model, data = frozen
    labels = torch.arange(len(data)) % 4
    cache = PatternCache.build(model, data)
    dataset = PatternDataset(torch.utils.data.TensorDataset(data, labels), cache)

    def batches(workers):
        loader = torch.utils.data.DataLoader(
            dataset,
            batch_size=16,
            shuffle=True,
            num_workers=workers,
            generator=torch.Generator().manual_seed(3),
        )
        return list(loader)

    serial, parallel = batches(0), batches(2)
    assert len(serial) == len(parallel) == 7
    for (x0, y0, p0), (x1, y1, p1) in zip(serial, parallel):
        assert torch.equal(x0, x1) and torch.equal(y0, y1)
        assert isinstance(p1, CachedPatterns) and p1.digest == model.structure_digest()
        assert all(torch.equal(a, b) for a, b in zip(p0, p1))
        torch.testing.assert_close(model(x1, patterns=p1), model(x1), rtol=0, atol=0)


def test_memory_mapped_cache_pickles_as_its_file(frozen, tmp_path):
    model, data = frozen
    PatternCache.build(model, data, path=tmp_path / "c")
    cache = PatternCache.load(tmp_path / "c")
    again = pickle.loads(pickle.dumps(cache))
    assert isinstance(again.words, np.memmap) and len(pickle.dumps(cache)) < cache.words.nbytes
    assert np.array_equal(again.words, cache.words) and again.digest == cache.digest


# ----------------------------------------------------------------- checked files


def test_files_carry_a_checksum_of_the_whole_file(frozen, tmp_path):
    model, data = frozen
    built = PatternCache.build(model, data, path=tmp_path / "c", batch_size=30)  # hashed while written
    built.save(tmp_path / "d")  # hashed after writing
    for folder in ("c", "d"):
        meta = json.loads((tmp_path / folder / "meta.json").read_text())
        raw = (tmp_path / folder / "patterns.npy").read_bytes()
        assert meta["version"] == 2 and meta["checksum"]["algorithm"] == "sha256"
        assert meta["checksum"] == {
            "algorithm": "sha256",
            "hexdigest": hashlib.sha256(raw).hexdigest(),
            "bytes": len(raw),
        }
        assert np.array_equal(PatternCache.load(tmp_path / folder).words, built.words)


def test_the_checksum_is_streamed_in_chunks(tmp_path, monkeypatch):
    path = tmp_path / "blob"
    blob = np.random.default_rng(0).bytes(10_007)
    path.write_bytes(blob)
    reads = []

    class Recording(io.FileIO):
        def readinto(self, buffer):
            reads.append(len(buffer))
            return super().readinto(buffer)

    monkeypatch.setattr(cache_files, "_CHUNK", 1000)
    monkeypatch.setattr(
        cache_files, "open", lambda path, mode, buffering: Recording(path, mode), raising=False
    )
    assert cache_files.hash_file(path) == hashlib.sha256(blob).hexdigest()
    assert max(reads) == 1000 and len(reads) == 12  # 11 chunks and the empty read that ends the file


def test_verify_false_skips_the_checksum(frozen, tmp_path, monkeypatch):
    model, data = frozen
    PatternCache.build(model, data, path=tmp_path / "c")

    def hashed(*args):
        raise AssertionError("hashed with verify=False")

    monkeypatch.setattr(cache_files, "hash_file", hashed)
    assert len(PatternCache.load(tmp_path / "c", verify=False)) == len(data)
    with pytest.raises(AssertionError, match="hashed"):
        PatternCache.load(tmp_path / "c")


def test_saving_over_a_mapped_cache_leaves_the_mapped_rows_intact(frozen, tmp_path):
    model, data = frozen
    PatternCache.build(model, data, path=tmp_path / "c")
    mapped = PatternCache.load(tmp_path / "c")
    before = np.array(mapped.words)
    PatternCache(np.zeros_like(before), mapped.widths, digest=mapped.digest).save(tmp_path / "c")
    assert np.array_equal(mapped.words, before)
    assert not PatternCache.load(tmp_path / "c").words.any()


# ----------------------------------------------------------------- the structure check


def test_the_model_refuses_patterns_from_a_cache_of_another_structure(frozen, tmp_path):
    model, data = frozen
    PatternCache.build(model, data, path=tmp_path / "c")
    cache = PatternCache.load(tmp_path / "c")  # no model= given: the check still happens at use
    other = GLAIMLP(9, [33, 70], 4).freeze()
    with pytest.raises(ValueError, match="rebuild the cache"):
        other(data[:5], patterns=cache.lookup([0, 1, 2, 3, 4]))
    with pytest.raises(ValueError, match="rebuild the cache"):
        other(data[:5], patterns=cache[:5].to("cpu"))  # moving the patterns keeps their tag
    model(data[:5], patterns=cache[:5])
    # Plain tensors are the caller's own: used as given.
    other(data[:5], patterns=list(cache[:5]))


def test_the_digest_is_computed_once_until_the_structure_changes(frozen, monkeypatch):
    model, data = frozen
    calls = []
    real = GLAIMLP.structure_digest
    monkeypatch.setattr(GLAIMLP, "structure_digest", lambda self: calls.append(1) or real(self))
    cache = PatternCache.build(model, data)
    patterns = cache.lookup([3, 4])
    for _ in range(5):
        model(data[[3, 4]], patterns=patterns)
    assert len(calls) == 1

    def changes_structure(change):
        calls.clear()
        change()
        with pytest.raises(ValueError, match="rebuild the cache"):
            model(data[[3, 4]].to(model.layers[0].weight.dtype), patterns=patterns)
        assert len(calls) == 1

    with torch.no_grad():
        changes_structure(lambda: model.structure.weight0.add_(1.0))  # in place
        changes_structure(lambda: (model.layers[0].weight.mul_(-1), model.refreeze()))
    state = GLAIMLP(9, [33, 70], 4).freeze().state_dict()
    changes_structure(lambda: model.load_state_dict(state))
    changes_structure(lambda: model.double())  # new buffers
    changes_structure(lambda: model.float())
