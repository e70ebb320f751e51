# Two commands for a fresh machine: `make book` and `make test` (see README.md).
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
# torch first, pinned: on the project's CPU machines pip takes the CPU build from local
# disk; on a CUDA machine the same line installs the CUDA build from PyPI.
TORCH  ?= torch==2.13.0
JOBS   ?= 2
# JOBS notebooks or test workers run at once; one CPU thread each keeps them from
# oversubscribing the cores (small tensors gain nothing from more threads)
export OMP_NUM_THREADS ?= 1

.PHONY: book test test-lib install install-book execute refresh bench-compile lint clean

# The venv with torch, pinned, installed first (once; an existing venv is kept).
$(VENV)/.torch:
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet "$(TORCH)"
	touch $@

# lib with one extra of pyproject.toml: .installed-book (execute and render the book) or
# .installed-dev (the tests; includes the book's tools, which nbval needs). Reinstalled
# when pyproject.toml changes.
$(VENV)/.installed-%: pyproject.toml $(VENV)/.torch
	$(PY) -m pip install --quiet -e ".[$*]"
	touch $@

install: $(VENV)/.installed-dev
install-book: $(VENV)/.installed-book

# Execute a copy of every chapter (quick scale on CPU, full on CUDA), then render the
# HTML from the executed copies. The committed notebooks are not modified.
book: install-book
	rm -rf _build/src && mkdir -p _build/src
	cp -r _config.yml _toc.yml book chapters _build/src/
	ls _build/src/chapters/*.ipynb | xargs -P $(JOBS) -n 1 \
		$(PY) -m jupyter execute --inplace --timeout=3600
	$(VENV)/bin/jupyter-book build _build/src --path-output . -W -n --keep-going
	@echo "The book is at file://$(CURDIR)/_build/html/index.html"

# Library tests, nbval over every chapter, the clean book build and the browser test.
test: install
	$(PY) -m pytest -n $(JOBS) --dist loadfile tests chapters \
		--nbval-lax --nbval-current-env -p no:cacheprovider

# The lib tests only (no notebooks, no book build, no browser): the contributors' loop.
test-lib: install
	$(PY) -m pytest -n $(JOBS) --dist loadfile tests --ignore=tests/test_book.py \
		-p no:cacheprovider

# Re-execute the committed notebooks in place, in quick mode, to refresh stored outputs.
refresh: install
	BOOK_SCALE=quick $(PY) -m jupyter execute --inplace --timeout=600 chapters/*.ipynb

bench-compile: install
	$(PY) -m lib.bench compile

lint: install
	$(VENV)/bin/ruff check lib tests chapters book/_ext

clean:
	rm -rf _build
