# The two commands of the README, `make lab` and `make test`, do all the set-up:
# they create .venv if it is missing and install the project with its dev extras.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.metalib-installed
CELL_TIMEOUT ?= 300
NOTEBOOKS := $(sort $(wildcard notebooks/[0-9][0-9]_*.ipynb))
# The chapters whose training cells have a full-budget branch (a GPU's default), run a
# second time by `make test` with that branch chosen, at quick-mode sizes.
FULL_BUDGET_NOTEBOOKS := $(sort $(wildcard notebooks/0[5-7]_*.ipynb))
# Data settings (README, "Settings"): a relative METALIB_DATA or METALIB_CACHE given to make
# is made absolute, because notebooks run with notebooks/ as their working directory.
ifdef METALIB_DATA
override export METALIB_DATA := $(abspath $(METALIB_DATA))
endif
ifdef METALIB_CACHE
override export METALIB_CACHE := $(abspath $(METALIB_CACHE))
endif
# Jupyter refuses to run as root (containers often do) unless told it may.
LAB_ARGS ?= $(if $(filter 0,$(shell id -u)),--allow-root,)

.PHONY: lab test install lint format execute student html checkpoints benchmark clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

$(STAMP): pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install -e ".[dev]"
	$(BIN)/python -c "import torch, torchvision; print('torch', torch.__version__, '/ torchvision', torchvision.__version__)"
	touch $(STAMP)

install: $(STAMP)

lab: install
	$(BIN)/jupyter lab $(LAB_ARGS) notebooks/

# Unit tests (the browser tests among them, skipped with the reason where Chromium is missing),
# then every notebook under nbval in quick mode with the demo budget, then chapters 05-07
# again with the full-budget branch of their training cells, then the linter.
test: install
	METALIB_QUICK=1 METALIB_BUDGET=demo $(BIN)/python -m pytest tests/ \
	    --nbval-lax --nbval-current-env --nbval-cell-timeout=$(CELL_TIMEOUT) $(NOTEBOOKS)
	METALIB_QUICK=1 METALIB_BUDGET=full $(BIN)/python -m pytest -p no:cacheprovider \
	    --nbval-lax --nbval-current-env --nbval-cell-timeout=$(CELL_TIMEOUT) $(FULL_BUDGET_NOTEBOOKS)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

lint: install
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

format: install
	$(BIN)/ruff check --fix .
	$(BIN)/ruff format .

# Re-run every notebook in full mode and store its outputs (the committed outputs come from here).
execute: install
	for nb in $(NOTEBOOKS); do \
	    METALIB_QUICK=0 $(BIN)/jupyter nbconvert --to notebook --execute --inplace \
	        --ExecutePreprocessor.timeout=3600 "$$nb" || exit 1; \
	done

# The browser tests alone (tests/test_browser.py; `make test` runs them too).
browser: install
	METALIB_QUICK=1 $(BIN)/python -m pytest -m browser tests/test_browser.py

# Student versions of the chapters: solution cells (tag "solution") emptied; never committed.
STUDENT_DIR ?= student
student: install
	$(BIN)/python -m metalib.student --out $(STUDENT_DIR) $(NOTEBOOKS)

# The chapters with their committed full-mode outputs as a static site (open index.html).
BOOK_DIR ?= build/book
html: install
	$(BIN)/python -m metalib.book --out $(BOOK_DIR) $(NOTEBOOKS)

# Retrain the shipped checkpoints at full budget (see README: "Retraining the checkpoints").
checkpoints: install
	for recipe in maml fomaml reptile meta-sgd anil pretrain; do \
	    name=$$(echo $$recipe | tr - _); \
	    $(BIN)/python -m metalib train sinusoid-$$recipe --out data/checkpoints/sinusoid_$$name \
	        --no-progress || exit 1; \
	done

benchmark: install
	$(BIN)/python -m pip install -e ".[bench]"
	$(BIN)/python benchmarks/sinusoid_training_speed.py
	$(BIN)/python benchmarks/meta_step_speed.py
	$(BIN)/python benchmarks/omniglot_data_speed.py
	$(BIN)/python benchmarks/omniglot_maml_speed.py
	$(BIN)/python benchmarks/protonet_speed.py
	$(BIN)/python benchmarks/test_time_cost.py

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache
