# The two commands of the README, `make lab` and `make test`, do all the set-up: they create
# .venv if it is missing and install the project with what its audience needs (pyproject.toml's
# extras: readers for `make lab`, instructors for the student versions and the book,
# maintainers for the tests), pinned to the tested set in requirements/lock.txt.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
# `make test LOCK=` installs within pyproject.toml's ranges instead of the lock (for example
# on a Python the lock was not made with: its header names the one it was).
LOCK ?= requirements/lock.txt
READERS := $(VENV)/.metalib-readers
INSTRUCTORS := $(VENV)/.metalib-instructors
MAINTAINERS := $(VENV)/.metalib-maintainers
# The oldest supported releases (requirements/floors.txt) in an environment of their own.
OLDEST_VENV ?= .venv-oldest
OLDEST_LOCK := requirements/lock-oldest.txt
CELL_TIMEOUT ?= 300
NOTEBOOKS := $(sort $(wildcard notebooks/[0-9][0-9]_*.ipynb))
# The chapters whose training cells have a full-budget branch (a GPU's default), run a
# second time by `make test` with that branch chosen, at quick-mode sizes.
FULL_BUDGET_NOTEBOOKS := $(sort $(wildcard notebooks/0[6-8]_*.ipynb))
# Data settings (docs/cli.md, "Settings"): a relative METALIB_DATA or METALIB_CACHE given to make
# is made absolute, because notebooks run with notebooks/ as their working directory.
ifdef METALIB_DATA
override export METALIB_DATA := $(abspath $(METALIB_DATA))
endif
ifdef METALIB_CACHE
override export METALIB_CACHE := $(abspath $(METALIB_CACHE))
endif
# Jupyter refuses to run as root (containers often do) unless told it may.
LAB_ARGS ?= $(if $(filter 0,$(shell id -u)),--allow-root,)

.PHONY: lab test test-oldest install lint format execute browser student html html-instructor checkpoints \
    benchmark lock clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

# One stamp per audience; each install is pinned by the lock (when LOCK is set).
$(VENV)/.metalib-%: pyproject.toml $(LOCK) | $(BIN)/python
	$(BIN)/python -m pip install $(if $(LOCK),-c $(LOCK),) -e ".[$*]"
	$(BIN)/python -c "import torch, torchvision; print('torch', torch.__version__, '/ torchvision', torchvision.__version__)"
	touch $@
.PRECIOUS: $(VENV)/.metalib-%

install: $(MAINTAINERS)

lab: $(READERS)
	$(BIN)/jupyter lab $(LAB_ARGS) notebooks/

# Unit tests (the browser tests among them, skipped with the reason where Chromium is missing),
# then every notebook under nbval in quick mode with the demo budget, then chapters 06-08
# again with the full-budget branch of their training cells, then the linter.
test: $(MAINTAINERS)
	METALIB_QUICK=1 METALIB_BUDGET=demo $(BIN)/python -m pytest tests/ \
	    --nbval-lax --nbval-current-env --nbval-cell-timeout=$(CELL_TIMEOUT) $(NOTEBOOKS)
	METALIB_QUICK=1 METALIB_BUDGET=full $(BIN)/python -m pytest -p no:cacheprovider \
	    --nbval-lax --nbval-current-env --nbval-cell-timeout=$(CELL_TIMEOUT) $(FULL_BUDGET_NOTEBOOKS)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

# The unit tests on the oldest supported releases (torch 2.11 with torchvision 0.26, numpy 1.26,
# ipywidgets 7.7, ...: requirements/floors.txt) in a second environment, .venv-oldest, pinned by
# requirements/lock-oldest.txt. The notebook tooling's tests (student versions, book, browser)
# run only in `make test`. `.ci/run` runs this after `make test`.
$(OLDEST_VENV)/.metalib-oldest: pyproject.toml $(OLDEST_LOCK)
	$(PYTHON) -m venv $(OLDEST_VENV)
	$(OLDEST_VENV)/bin/python -m pip install -c $(OLDEST_LOCK) -e ".[maintainers]"
	touch $@

test-oldest: $(OLDEST_VENV)/.metalib-oldest
	METALIB_QUICK=1 METALIB_BUDGET=demo $(OLDEST_VENV)/bin/python -m pytest -p no:cacheprovider \
	    tests/ -m "not browser" --ignore=tests/test_student.py --ignore=tests/test_book.py

lint: $(MAINTAINERS)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

format: $(MAINTAINERS)
	$(BIN)/ruff check --fix .
	$(BIN)/ruff format .

# Re-run every notebook in full mode and store its outputs (the committed outputs come from here).
execute: $(INSTRUCTORS)
	for nb in $(NOTEBOOKS); do \
	    METALIB_QUICK=0 $(BIN)/jupyter nbconvert --to notebook --execute --inplace \
	        --ExecutePreprocessor.timeout=3600 "$$nb" || exit 1; \
	done

# The browser tests alone (tests/test_browser.py; `make test` runs them too).
browser: $(MAINTAINERS)
	METALIB_QUICK=1 $(BIN)/python -m pytest -m browser tests/test_browser.py

# Student versions of the chapters: solution cells (tag "solution") emptied; never committed.
STUDENT_DIR ?= student
student: $(INSTRUCTORS)
	$(BIN)/python -m metalib.student --out $(STUDENT_DIR) $(NOTEBOOKS)

# The chapters with their committed full-mode outputs as a static site (open index.html):
# the student versions (no solutions), and the instructor's book with them.
BOOK_DIR ?= build/book
html: $(INSTRUCTORS)
	$(BIN)/python -m metalib.book --out $(BOOK_DIR) $(NOTEBOOKS)

INSTRUCTOR_BOOK_DIR ?= build/book-instructor
html-instructor: $(INSTRUCTORS)
	$(BIN)/python -m metalib.book --solutions --out $(INSTRUCTOR_BOOK_DIR) $(NOTEBOOKS)

# Retrain the shipped sinusoid checkpoints at full budget (see docs/retraining.md), on the
# threads they were made with: a sum split over other threads differs in its last bits.
checkpoints: $(READERS)
	for recipe in maml fomaml reptile meta-sgd anil pretrain; do \
	    name=$$(echo $$recipe | tr - _); \
	    OMP_NUM_THREADS=2 $(BIN)/python -m metalib train sinusoid-$$recipe \
	        --out data/checkpoints/sinusoid_$$name --no-progress || exit 1; \
	done
	# Meta-SGD trained for five steps, its step sizes kept in [0, 0.05], β = 0.001 (chapter 03)
	OMP_NUM_THREADS=2 $(BIN)/python -m metalib train sinusoid-meta-sgd \
	    --out data/checkpoints/sinusoid_meta_sgd_5_steps --inner-steps 5 --clip-steps 0.05 \
	    --outer-lr 0.001 --no-progress
	# ANIL trained on support sets of the K = 5 it is tested with (chapter 03)
	OMP_NUM_THREADS=2 $(BIN)/python -m metalib train sinusoid-anil --out data/checkpoints/sinusoid_anil_k5 \
	    --k-shot 5 --no-progress
	# The learned update rule, made on one thread (5 minutes on 1 December 2026)
	OMP_NUM_THREADS=1 $(BIN)/python -m metalib train sinusoid-lstm-meta \
	    --out data/checkpoints/sinusoid_lstm_meta --no-progress

benchmark: $(READERS)
	$(BIN)/python -m pip install $(if $(LOCK),-c $(LOCK),) -e ".[bench]"
	$(BIN)/python benchmarks/sinusoid_training_speed.py
	$(BIN)/python benchmarks/meta_step_speed.py
	$(BIN)/python benchmarks/cli_process_speed.py
	$(BIN)/python benchmarks/omniglot_data_speed.py
	$(BIN)/python benchmarks/omniglot_maml_speed.py
	$(BIN)/python benchmarks/protonet_speed.py
	$(BIN)/python benchmarks/test_time_cost.py

# Refresh both locks: the newest releases within pyproject.toml's ranges, and the oldest
# (requirements/floors.txt), each resolved in a new environment under build/lock; then run
# `make test` and `make test-oldest` and commit the two files (docs/installs.md).
LOCK_DIR := build/lock
lock:
	rm -rf $(LOCK_DIR)
	$(PYTHON) -m venv $(LOCK_DIR)/newest
	$(LOCK_DIR)/newest/bin/python -m pip install -e ".[maintainers]"
	$(PYTHON) -m venv $(LOCK_DIR)/oldest
	$(LOCK_DIR)/oldest/bin/python -m pip install -c requirements/floors.txt -e ".[maintainers]"
	for which in newest oldest; do \
	    out=requirements/lock$$([ $$which = oldest ] && echo -oldest).txt; \
	    made_on=$$($(LOCK_DIR)/$$which/bin/python -c \
	        'import platform as p; print("Python", p.python_version(), p.system(), p.machine())'); \
	    { echo "# The $$which tested set, made by make lock on $$made_on, $$(date -u +%F)."; \
	      echo "# make and CI install with it as pip constraints (-c): docs/installs.md."; \
	      $(LOCK_DIR)/$$which/bin/python -m pip freeze --exclude-editable; } > $$out.tmp || exit 1; \
	    mv $$out.tmp $$out; \
	done

clean:
	rm -rf $(VENV) $(OLDEST_VENV) .pytest_cache .ruff_cache
