# jaxflash developer commands. Each works from a fresh clone: the first target run creates .venv.
#   make test         the test suite (what CI runs), against the pinned versions of constraints.txt
#   make test-latest  the same suite against the newest versions the registry serves (.venv-latest)
#   make demo         the main job: train the default LM (ARGS="key=value ..." overrides)
#   make notebooks    executes every notebook into build/notebooks/*.ipynb
#   make bench        every benchmark suite on this machine, in one run (SUITE=name for one)
#   make gpu-check    on a CUDA machine without network: compiled kernels vs references, then GPU timings
#   make lint         ruff

SHELL := /bin/bash
VENV := .venv
PY := $(VENV)/bin/python
LATEST_VENV := .venv-latest
# Python 3.12 through pyenv when the machine has it (as development and CI do), else python3.
PYTHON_BOOT := $(shell if command -v pyenv >/dev/null 2>&1 && pyenv prefix 3.12 >/dev/null 2>&1; then echo "$$(pyenv prefix 3.12)/bin/python3"; elif command -v python3.12 >/dev/null 2>&1; then echo python3.12; else echo python3; fi)
PYTEST_ARGS ?= -n 2
SUITE ?=
GPU_CHECK_OUT ?= gpu-check-results
# The GPU machine's own interpreter (it has jax for CUDA and no registry).
GPU_PYTHON ?= python3
# e.g. GPU_CHECK_ARGS="--suites fftconv monarch --budget-seconds 300" to fit a short GPU session.
GPU_CHECK_ARGS ?=

.PHONY: test test-slow test-latest demo notebooks bench gpu-check lint venv clean

venv: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml constraints.txt
	test -x $(PY) || $(PYTHON_BOOT) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -c constraints.txt -e ".[test]"
	touch $@

test: venv
	$(PY) -m pytest $(PYTEST_ARGS)

test-slow: venv
	$(PY) -m pytest $(PYTEST_ARGS) -m slow

# No constraints file: pip resolves the newest releases of everything pyproject.toml allows.
test-latest:
	test -x $(LATEST_VENV)/bin/python || $(PYTHON_BOOT) -m venv $(LATEST_VENV)
	$(LATEST_VENV)/bin/python -m pip install -q --upgrade pip
	$(LATEST_VENV)/bin/python -m pip install -q --upgrade --upgrade-strategy eager -e ".[test]"
	$(LATEST_VENV)/bin/python -m pip list 2>/dev/null | grep -E "^(jax|jaxlib|flax|optax|orbax-checkpoint|chex|numpy) "
	$(LATEST_VENV)/bin/python -m pytest $(PYTEST_ARGS)

notebooks: venv
	mkdir -p build/notebooks
	for nb in notebooks/*.py; do \
		$(VENV)/bin/jupytext --to notebook --execute "$$nb" -o "build/notebooks/$$(basename "$${nb%.py}").ipynb" || exit 1; \
	done

# The main job: train the default model on the default corpus (about 3 minutes on 2 CPU cores), with a
# progress bar, checkpoints, an evaluation and a generated sample. ARGS="steps=1000 workdir=runs/long"
# scales it; running it again with the same workdir resumes. The kernel tour: python -m jaxflash.demo ops.
ARGS ?=
demo: venv
	XLA_FLAGS="$${XLA_FLAGS:---xla_cpu_multi_thread_eigen=false}" $(PY) -m jaxflash.train demo $(ARGS)

bench: venv
	$(PY) -m jaxflash.bench $(or $(SUITE),$$($(PY) -c "from jaxflash.bench.suites import SUITE_MODULES; print(*SUITE_MODULES)"))

gpu-check:
	$(GPU_PYTHON) -m pip install -q --no-deps --no-build-isolation -e .
	$(GPU_PYTHON) -m jaxflash.bench.gpu_check --out $(GPU_CHECK_OUT) $(GPU_CHECK_ARGS)

lint: venv
	$(PY) -m ruff check .
	$(PY) -m ruff format --check .

clean:
	rm -rf $(VENV) $(LATEST_VENV) build bench-results gpu-check-results *.egg-info .pytest_cache .ruff_cache
