# OralX Book: the two commands of the README are `make book` and `make test`.
# Both create .venv if missing, install the project with its extras, and generate the embedded
# synthetic dataset (data/synthetic) if it is not there yet.

PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.oralx-installed
DATA   := data/synthetic
# pytest workers (pytest-xdist): one per CPU core
TEST_JOBS ?= auto

.PHONY: setup data book test test-fast student strip bench clean help

help:
	@echo "make book     build the site to _build/html (sets everything up first)"
	@echo "make test     run the test suite, then execute every chapter as make book does"
	@echo "make student  build the student edition (solutions hidden) to _build/student"
	@echo "make strip    remove outputs from the notebooks before committing"
	@echo "make bench    run the speed benchmarks (prints tables, writes benchmarks/results/)"

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --progress-bar off -e ".[book,test]"
	touch $(STAMP)

setup: $(STAMP)

# (the rare-class evaluation set is written by the first chapter that needs it, under a lock)
data: setup
	$(BIN)/python -c "from oralx_lib.data import ensure_synthetic; print('dataset:', ensure_synthetic('$(DATA)'))"

# booktools.bookbuild trains the chapters' shared runs side by side, executes the chapters
# (side by side, cached in _build/stage, restarted if a kernel stalls) and renders them with
# Jupyter Book (`jupyter-book build .` by hand works too).
book: data
	$(BIN)/python -m booktools.bookbuild

student: data
	$(BIN)/python -m booktools.bookbuild --student

# The unit tests on every core, then every chapter executed by the book's own executor (a
# failing cell fails the target and is printed with its traceback); a later `make book`
# reuses those executed chapters and only renders.
test: data
	$(BIN)/python -m pytest tests -n $(TEST_JOBS) -p no:cacheprovider
	$(BIN)/python -m booktools.bookbuild --execute-only

test-fast: data
	$(BIN)/python -m pytest tests -m "not slow"

strip:
	$(BIN)/python -m booktools.notebooks strip book

bench: data
	$(BIN)/python benchmarks/bench_data.py --out benchmarks/results/data.json

clean:
	rm -rf _build
