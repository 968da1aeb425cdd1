# The two commands of the README:  `make demo`  and  `make test`;  `make gpu` on a CUDA machine.
# Both install into a local virtual environment (.venv) first; nothing is installed by hand.
#
# torch: an importable torch (for example a CUDA build the user already has) is kept: the venv then sees the
# system site-packages. Otherwise the CPU build is installed first on machines without CUDA, so that the
# project's plain `torch>=2.4` requirement is already met and pip never pulls a multi-GB CUDA build.
# Override with `make test TORCH_SPEC='torch==2.x.y'`.

PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
TORCH_SPEC ?= torch==2.13.0
STAMP := $(VENV)/.glai-installed

.PHONY: demo test test-deep bench gpu install clean

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
# Results go to $(GPU_OUT)/gpu_check.jsonl line by line; `make gpu ARGS=--dry-run` runs it on a CPU.
GPU_OUT ?= gpu-out

gpu:
	@py=$(PYTHON); if [ -x $(PY) ] && $(PY) -c "import torch, triton" >/dev/null 2>&1; then py=$(PY); fi; \
	PYTHONPATH=.$${PYTHONPATH:+:$$PYTHONPATH} $$py bench/gpu_check.py --out $(GPU_OUT) $(ARGS)

clean:
	rm -rf $(VENV) .pytest_cache .benchmarks
