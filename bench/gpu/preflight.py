"""What this machine is, and whether the run can go on: seconds, before anything is compiled.

Triton 3.6 builds a small C launcher per kernel signature at the first launch, with ``$CC`` or else ``gcc`` or
``clang`` from the ``PATH``, and the headers of ``sysconfig``'s include folder (``Python.h``); without them
every kernel would fail, each after its own compile. So both are looked for first, then a one-element kernel
is compiled and launched: the whole tool chain (Triton's compiler, ``ptxas``, the launcher, the driver) has
worked once before the first real case starts.
"""

from __future__ import annotations

import datetime
import os
import platform
import shutil
import subprocess
import sys
import sysconfig
import time
from pathlib import Path


def c_compiler() -> tuple[str | None, str]:
    """``(path or None, how it was found)``, in the order Triton 3.6 looks."""
    cc = os.environ.get("CC")
    if cc:
        found = shutil.which(cc) or (cc if Path(cc).is_file() else None)
        return found, f"$CC={cc}"
    for name in ("gcc", "clang"):
        path = shutil.which(name)
        if path:
            return path, name
    return None, "gcc or clang on the PATH, or $CC"


def python_header() -> Path:
    scheme = sysconfig.get_default_scheme()
    if scheme == "posix_local":  # Debian's scheme; Triton reads the posix_prefix one as well
        scheme = "posix_prefix"
    return Path(sysconfig.get_paths(scheme=scheme)["include"]) / "Python.h"


def driver_version() -> str:
    """The NVIDIA driver's version: ``nvidia-smi``'s, else the CUDA driver API version the driver supports
    (``cuDriverGetVersion`` from ``libcuda``, which every CUDA driver ships; torch has no public call for it,
    and its private ones differ between releases), else ``"unknown"``. Never raises."""
    if shutil.which("nvidia-smi"):
        try:
            out = subprocess.run(
                ["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"],
                capture_output=True,
                text=True,
                timeout=10,
            )
            if out.returncode == 0 and out.stdout.strip():
                return out.stdout.strip().splitlines()[0]
        except (OSError, subprocess.SubprocessError):
            pass
    try:
        import ctypes

        version = ctypes.c_int(0)
        if ctypes.CDLL("libcuda.so.1").cuDriverGetVersion(ctypes.byref(version)) == 0 and version.value:
            v = version.value  # e.g. 13000
            return f"CUDA driver API {v // 1000}.{v % 1000 // 10}"
    except (OSError, AttributeError):
        pass
    return "unknown"


def _smoke_kernel():
    import triton
    import triton.language as tl

    @triton.jit
    def add_one(x_ptr, n, BLOCK: tl.constexpr):
        offs = tl.arange(0, BLOCK)
        mask = offs < n
        # A loop bounded by a Triton scalar, as every GEMM kernel's K loop: Triton 3.6's interpreter fails
        # there with numpy >= 2.4 (int() of a shape-(1,) array), so a dry run finds it here, once.
        for _ in range(0, tl.cdiv(n, BLOCK)):
            tl.store(x_ptr + offs, tl.load(x_ptr + offs, mask=mask) + 1.0, mask=mask)

    return add_one


def smoke_launch(device) -> float:
    """Compile and run a one-element Triton kernel; seconds taken. Raises what Triton raises."""
    import torch

    start = time.perf_counter()
    x = torch.zeros(1, device=device)
    _smoke_kernel()[(1,)](x, 1, BLOCK=16)
    if device.type == "cuda":
        torch.cuda.synchronize()
    if x.item() != 1.0:
        raise RuntimeError(f"a one-element kernel wrote {x.item()} instead of 1.0")
    return time.perf_counter() - start


def facts(dry_run: bool) -> tuple[dict, str | None]:
    """``(facts, problem)``: what the machine is, and the one line saying why the run cannot go on (or None).

    Never raises: whatever cannot be read is reported as such."""
    now = datetime.datetime.now(datetime.timezone.utc)
    info: dict = {"date": now.strftime("%Y-%m-%d %H:%M"), "python": platform.python_version(),
                  "executable": sys.executable, "dry_run": dry_run}  # fmt: skip
    cc, how = c_compiler()
    header = python_header()
    info.update(cc=cc, cc_lookup=how, python_h=str(header), python_h_found=header.is_file())
    try:
        import numpy

        info["numpy"] = numpy.__version__
    except Exception as exc:  # torch works without numpy; say so rather than stop
        info["numpy"] = f"not importable ({type(exc).__name__})"
    try:
        import torch
    except Exception as exc:
        return info, f"torch does not import ({type(exc).__name__}: {exc})"
    info.update(torch=torch.__version__, cuda_runtime=torch.version.cuda)
    try:
        import triton

        info["triton"] = triton.__version__
    except Exception as exc:
        return info, f"triton does not import ({type(exc).__name__}: {exc}); the kernels need it"
    info["tuning_cache_dir"] = _tuning_dir()
    if dry_run:
        info.update(device="cpu", gpu=f"{_cpu_name()} (Triton interpreter, dry run)")
        return info, None
    try:
        available = torch.cuda.is_available()
    except Exception as exc:
        available, info["cuda_error"] = False, f"{type(exc).__name__}: {exc}"
    if not available:
        built = (
            "a CPU-only build of torch"
            if torch.version.cuda is None
            else f"torch for CUDA {torch.version.cuda}"
        )
        return info, (
            f"no CUDA device: torch.cuda.is_available() is False ({built}). This script checks and times the "
            "kernels on a GPU; without one run `python bench/gpu_check.py --dry-run` or `make test`"
        )
    props = torch.cuda.get_device_properties(0)
    info.update(
        device="cuda",
        gpu=props.name,
        sm_count=props.multi_processor_count,
        capability=f"{props.major}.{props.minor}",
        memory_gib=round(props.total_memory / 2**30, 1),
        driver=driver_version(),
        device_count=torch.cuda.device_count(),
    )
    info["tuning_cache"] = _tuning_entries()
    if cc is None:
        return info, f"no C compiler ({how}): Triton {info['triton']} builds a C launcher per kernel with one"
    if not header.is_file():
        return info, (
            f"no Python headers at {header}: Triton {info['triton']} builds its kernel launchers against "
            f"them (install python{sys.version_info.major}.{sys.version_info.minor}-dev)"
        )
    return info, None


def smoke(info: dict) -> str | None:
    """Run the one-element kernel; records its time in ``info``; the problem line or None."""
    import torch

    try:
        info["smoke_s"] = round(smoke_launch(torch.device(info["device"])), 2)
    except Exception as exc:
        from bench.gpu import failures

        inner = failures.innermost(exc)
        if info.get("device") == "cpu" and any(s in inner for s in NUMPY_SCALAR_ERRORS):
            return (
                f"Triton {info.get('triton')}'s interpreter cannot run with numpy {info.get('numpy')} ({inner}): "
                "expected numpy < 2.4 or a Triton whose interpreter takes it for --dry-run; a GPU run does "
                "not use the interpreter"
            )
        last = (str(exc).strip().splitlines() or [""])[-1][:300]
        return f"Triton cannot compile and launch a one-element kernel here: {type(exc).__name__}: {last}"
    return None


# What numpy >= 2.4 says when Triton 3.6's interpreter calls int() on a shape-(1,) array.
NUMPY_SCALAR_ERRORS = ("only 0-dimensional arrays", "only length-1 arrays", "only size-1 arrays")


def describe(info: dict) -> list[str]:
    """The preflight as two or three lines for standard output."""
    if info.get("device") == "cuda":
        head = (
            f"{info['gpu']}, {info['sm_count']} SMs, sm_{info['capability'].replace('.', '')}, "
            f"{info['memory_gib']} GiB; driver {info['driver']}, CUDA {info['cuda_runtime']}"
        )
    else:
        head = info.get("gpu") or ("no CUDA device" if "torch" in info else "no GPU known: torch is missing")
    versions = ", ".join(
        f"{k} {info[k]}" for k in ("python", "torch", "triton", "numpy") if info.get(k) is not None
    )
    header = "found" if info.get("python_h_found") else "MISSING"
    cc = info.get("cc") or "MISSING"
    tool = f"C compiler {cc} ({info.get('cc_lookup')}); Python.h {header} ({info['python_h']})"
    lines = [head, versions, tool]
    if info.get("tuning_cache"):
        lines[1] += f"; tuning cache: {info['tuning_cache']}"
    if "smoke_s" in info:
        lines[-1] += f"; one-element kernel {info['smoke_s']} s"
    return lines


def _tuning_dir() -> str:
    try:
        from glai_kernels import tuning_cache

        return str(tuning_cache.cache_root() / "autotune")
    except Exception as exc:
        return f"unknown ({type(exc).__name__})"


def _tuning_entries() -> str:
    """How many tuned configurations this GPU, Triton and kernel source have in the cache (they override the
    defaults; each line of the run names the one it used)."""
    try:
        import torch

        from glai_kernels import tuning_cache

        ident = tuning_cache.identity(torch.cuda.current_device())
        if ident is None:
            return "none"
        n = len(tuning_cache.load(ident))
        return f"{n} entries in {tuning_cache.cache_path(ident.gpu, ident.triton)}" if n else "none"
    except Exception as exc:
        return f"unknown ({type(exc).__name__}: {exc})"


def _cpu_name() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return "CPU " + line.split(":", 1)[1].strip()
    except OSError:
        pass
    return f"CPU {platform.processor() or platform.machine()}"
