"""A fake GPU for the tuning tests: an identity, a cache folder of its own, entries and files to write."""

from glai_kernels import launch_configs, runtime, tuning
from glai_kernels import tuning_cache as cache

FAKE = cache.Identity("Fake GPU 80GB", "3.6.0", "0123456789abcdef")
# A tuned entry unlike any default (flags at 0: the complete form config_for returns).
FAST = tuning.check_tile_config(
    {"BLOCK_M": 64, "BLOCK_N": 32, "BLOCK_K": 64, "GROUP_M": 4, "num_warps": 2, "num_stages": 5}
)


def fake_gpu(tmp_path, monkeypatch):
    """An empty cache folder, a fake GPU identity, and config_for out of interpreter mode; yields the cache
    file's path. Test modules wrap it in a fixture of the same name."""
    monkeypatch.setenv(cache.ENV_DIR, str(tmp_path))
    monkeypatch.setattr(runtime, "interpreting", lambda: False)
    monkeypatch.setattr(launch_configs, "_current_identity", lambda index: FAKE)
    launch_configs.reload()
    yield cache.cache_path(FAKE.gpu, FAKE.triton)
    launch_configs.reload()


def entry(kernel="gate", dtype="float32", bucket=(1, 1, 1), config=FAST):
    return {"kernel": kernel, "dtype": dtype, "bucket": list(bucket), "config": dict(config), "ms": 0.5}


def valid_file(**override) -> dict:
    data = {"format": cache.FORMAT, "version": cache.VERSION, **FAKE._asdict(), "entries": [entry()]}
    data.update(override)
    return data


def default(kernel="gate", M=100, N=300, K=300, key="float32"):
    """The default without a GPU (Ampere tiles), as config_for gives it on a machine with no device."""
    return tuning.default_config(kernel, M, N, K, key, None)
