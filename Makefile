# The two commands of the README:  `make demo`  and  `make test`;  `make gpu` on a CUDA machine.
# Both install into a local virtual environment (.venv) first; nothing is installed by hand.
#
# torch: an importable torch (for example a CUDA build the user already has) is kept: the venv then sees the
# system site-packages. Otherwise the CPU build is installed first on machines without CUDA, so that the
# project's plain `torch>=2.11` requirement is already met and pip never pulls a multi-GB CUDA build.
# Override with `make test TORCH_SPEC='torch==2.x.y'`.

PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
TORCH_SPEC ?= torch==2.13.0
STAMP := $(VENV)/.glai-installed

.PHONY: demo test test-deep test-floor bench gpu install clean

$(STAMP): pyproject.toml Makefile
	@if $(PYTHON) -c "import torch" >/dev/null 2>&1; then \
		echo "using the torch already installed for $(PYTHON)"; \
		$(PYTHON) -m venv --system-site-packages $(VENV); \
	else \
		$(PYTHON) -m venv $(VENV); \
	fi
	@if ! $(PY) -c "import torch" >/dev/null 2>&1; then \
		if command -v nvidia-smi >/dev/null 2>&1; then \
			$(PY) -m pip install --quiet torch; \
		else \
			$(PY) -m pip install --quiet "$(TORCH_SPEC)"; \
		fi; \
	fi
	$(PY) -m pip install --quiet -e ".[demo,test]"
	@touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/glai-demo $(ARGS)

test: $(STAMP)
	$(PY) -m pytest -q $(ARGS)

# The differential test drawing new configurations for DEEP_S seconds (not part of `make test`): it prints the
# number tried and fails on any mismatch, each with its seed, shrunk configuration and one-line repro.
DEEP_S ?= 600

test-deep: $(STAMP)
	GLAI_DEEP_S=$(DEEP_S) $(PY) -m pytest -q -s -m deep tests/test_differential.py $(ARGS)

bench: $(STAMP)
	$(PY) -m pytest bench/ --benchmark-only -q $(ARGS)

# The GPU check installs nothing (the GPU machine reaches no package index and has its own torch, Triton and
# numpy): the venv's python when `make install` made one, else $(PYTHON), with the checkout on PYTHONPATH.
# Results go to $(GPU_OUT)/gpu_check.jsonl line by line; `make gpu ARGS=--dry-run` runs it on a CPU. The run
# ends before GPU_DEADLINE seconds (a lent GPU's call lasts 600 s, and its files must still come back).
GPU_OUT ?= gpu-out
GPU_DEADLINE ?= 540

gpu:
	@py=$(PYTHON); if [ -x $(PY) ] && $(PY) -c "import torch, triton" >/dev/null 2>&1; then py=$(PY); fi; \
	PYTHONPATH=.$${PYTHONPATH:+:$$PYTHONPATH} $$py bench/gpu_check.py --out $(GPU_OUT) --deadline-s $(GPU_DEADLINE) $(ARGS)

# The oldest stack the project declares, which is the GPU machine's: Python 3.12, torch 2.11.0 (pip's build for
# it is the CUDA one, about 6 GB), Triton 3.6.0, numpy 2.5. Opt-in, not CI. Builds $(FLOOR_VENV) unless it exists
# already (`make test-floor FLOOR_VENV=/path/to/venv` reuses one as it is), then runs the fused and per-layer
# lowering scripts, the GPU check's dry run and the test suite, the checkout on PYTHONPATH; exits non-zero if
# any of them failed and ends with pytest's summary line. Outputs of the first three go to $(FLOOR_OUT).
FLOOR_VENV ?= .venv-floor
FLOOR_OUT ?= floor-out
FLOOR_PYTHON ?= $(shell for p in $$(command -v python3.12) /root/.pyenv/versions/3.12.*/bin/python3.12; do \
	"$$p" -c "" 2>/dev/null && { echo "$$p"; break; }; done)
FLOOR_PY := $(FLOOR_VENV)/bin/python
FLOOR_PINS := "torch==2.11.0" "triton==3.6.0" "numpy>=2.5,<2.6" "pytest>=7.4" "pytest-benchmark>=4.0" \
	"mnist1d>=0.0.2" "matplotlib>=3.7" "tqdm>=4.60"

test-floor:
	@if [ ! -x $(FLOOR_PY) ]; then \
		if [ -z "$(FLOOR_PYTHON)" ]; then echo "test-floor: no python3.12 found (set FLOOR_PYTHON=...)"; exit 2; fi; \
		$(FLOOR_PYTHON) -m venv $(FLOOR_VENV) && $(FLOOR_PY) -m pip install --quiet $(FLOOR_PINS) || exit 2; \
	fi
	@mkdir -p $(FLOOR_OUT); $(FLOOR_PY) -c "import sys, torch, triton, numpy; print('floor stack: Python', \
		sys.version.split()[0], 'torch', torch.__version__, 'triton', triton.__version__, 'numpy', numpy.__version__)"; \
	failed=""; export PYTHONPATH=.$${PYTHONPATH:+:$$PYTHONPATH}; \
	env -u TRITON_INTERPRET $(FLOOR_PY) tests/_lower_fused.py > $(FLOOR_OUT)/lower_fused.jsonl \
		|| failed="$$failed tests/_lower_fused.py"; \
	env -u TRITON_INTERPRET $(FLOOR_PY) tests/_lower_kernels.py > $(FLOOR_OUT)/lower_kernels.jsonl \
		|| failed="$$failed tests/_lower_kernels.py"; \
	$(FLOOR_PY) bench/gpu_check.py --dry-run --out $(FLOOR_OUT)/gpu-dry-run > $(FLOOR_OUT)/gpu_dry_run.log 2>&1 \
		|| failed="$$failed bench/gpu_check.py --dry-run (see $(FLOOR_OUT)/gpu_dry_run.log)"; \
	[ -z "$$failed" ] || echo "test-floor: failed:$$failed"; \
	$(FLOOR_PY) -m pytest -q -p no:cacheprovider $(ARGS) || failed="$$failed pytest"; \
	[ -z "$$failed" ]

clean:
	rm -rf $(VENV) .pytest_cache .benchmarks
