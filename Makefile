# Set-up and everyday commands. `make demo` and `make test` each work on a fresh machine.
PYTHON ?= python3
# Installed only when torch is missing; override for another build, e.g. TORCH_SPEC='torch>=2.4'.
TORCH_SPEC ?= torch==2.13.0
PIP := $(PYTHON) -m pip install --quiet --disable-pip-version-check

.PHONY: install dev demo test bench clean

install:
	@$(PYTHON) -c "import torch" 2>/dev/null || $(PIP) "$(TORCH_SPEC)"
	$(PIP) -e .

dev:
	@$(PYTHON) -c "import torch" 2>/dev/null || $(PIP) "$(TORCH_SPEC)"
	$(PIP) -e '.[dev]'

# The whole pipeline on the embedded toy corpus (English->German numbers, dates, times).
demo: install
	$(MAKE) -C recipes/toy PYTHON=$(PYTHON)

test: dev
	$(PYTHON) -m ruff check lstmmt tests benchmarks data
	$(PYTHON) -m pytest

clean:
	$(MAKE) -C recipes/toy clean
