# Set-up is part of every target: a fresh machine needs only Python 3.11 and the package registries.
PYTHON ?= $(shell command -v python3.11 2>/dev/null || command -v python3)
VENV ?= .venv
PY := $(VENV)/bin/python
export NO_ALBUMENTATIONS_UPDATE := 1
export WANDB_MODE ?= offline

.PHONY: install demo test lint format clean report quality bench

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -e '.[dev]'
	touch $@

install: $(VENV)/.installed

## Train GANomaly on the built-in synthetic data and print the results table.
demo: install
	$(PY) train.py callbacks.progress_bar.refresh_rate=0

## The whole test suite (CPU), one worker process per core (at most 4, pytest-xdist); the
## slowest tests are listed at the end.
test: install
	$(PY) -m pytest -n auto --maxprocesses=4 --durations=15 $(PYTEST_ARGS)

lint: install
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

format: install
	$(VENV)/bin/ruff check --fix .
	$(VENV)/bin/ruff format .

clean:
	rm -rf outputs .cache .pytest_cache .ruff_cache

## Tables and figures across runs: make report SWEEP="multirun/<time> [more dirs]"
report: install
	$(PY) report.py $(SWEEP)

## Real-defect quality: every model on the 4 real sets (../shared/data) vs its no-learning
## reference (mean / PCA reconstruction) and lift; hours (QUALITY_ARGS="--reuse" resumes).
quality: install
	$(PY) bench/quality.py $(QUALITY_ARGS)

## Benchmarks: sections of BENCHMARKS.md, raw JSON in bench/results/ (BENCH_ARGS= on a dedicated machine)
BENCH_ARGS ?= --threads 1
bench: install
	$(PY) bench/speed.py $(BENCH_ARGS)
	$(PY) bench/data_epoch.py
	$(PY) bench/attention_memory.py $(BENCH_ARGS)
	$(PY) bench/anomalib_compare.py $(BENCH_ARGS)
	@if $(PY) -c "import sys, torch; sys.exit(not torch.cuda.is_available())"; then \
		$(PY) bench/speed.py --device cuda && \
		$(PY) bench/speed.py --device cuda --precision bf16-mixed --channels-last && \
		$(PY) bench/attention_memory.py --device cuda; \
	else echo "no CUDA GPU: GPU benchmarks skipped"; fi
