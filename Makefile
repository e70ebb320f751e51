# Two commands for a fresh machine: `make book` and `make test` (see README.md).
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
# torch first, pinned: on the project's CPU machines pip takes the CPU build from local
# disk; on a CUDA machine the same line installs the CUDA build from PyPI.
TORCH  ?= torch==2.13.0
JOBS   ?= 2
# make book CHAPTERS="07 08" (or make refresh CHAPTERS=...) executes only those chapters
CHAPTERS ?=
# JOBS notebooks or test workers run at once; one CPU thread each keeps them from
# oversubscribing the cores (small tensors gain nothing from more threads)
export OMP_NUM_THREADS ?= 1

.PHONY: book test test-lib install install-book execute refresh bench-compile lint clean

# The venv with torch, pinned, installed first (once; an existing venv is kept).
$(VENV)/.torch:
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	@echo "Installing $(TORCH) into $(VENV) (pip's log: $(VENV)/install-torch.log)"
	@{ $(PY) -m pip install --upgrade pip && $(PY) -m pip install "$(TORCH)"; } \
		> $(VENV)/install-torch.log 2>&1 || { tail -n 30 $(VENV)/install-torch.log; exit 1; }
	@touch $@

# lib with one extra of pyproject.toml: .installed-book (execute and render the book) or
# .installed-dev (the tests; includes the book's tools, which nbval needs). Reinstalled
# when pyproject.toml changes.
$(VENV)/.installed-%: pyproject.toml $(VENV)/.torch
	@echo "Installing lib with its [$*] extra (pip's log: $(VENV)/install-$*.log)"
	@$(PY) -m pip install -e ".[$*]" > $(VENV)/install-$*.log 2>&1 \
		|| { tail -n 30 $(VENV)/install-$*.log; exit 1; }
	@touch $@

install: $(VENV)/.installed-dev
install-book: $(VENV)/.installed-book

# Execute a copy of every chapter of the toc in _build/src (quick scale on CPU, full on
# CUDA; CHAPTERS: only those, the others keep their committed outputs), JOBS at a time,
# then render _build/html from the copies and the build report (book/build.py: progress,
# one line per chapter, logs in _build/logs/). A chapter that fails keeps its committed
# outputs under a note on its page, and make book exits non-zero. The committed notebooks
# are not modified.
book: install-book
	@$(PY) book/build.py book --jobs $(JOBS) --chapters "$(CHAPTERS)"

# Library tests, nbval over every chapter, the clean book build and the browser test.
test: install
	$(PY) -m pytest -n $(JOBS) --dist loadfile tests chapters \
		--nbval-lax --nbval-current-env -p no:cacheprovider

# The lib tests only (no notebooks, no book build, no browser): the contributors' loop.
test-lib: install
	$(PY) -m pytest -n $(JOBS) --dist loadfile tests --ignore=tests/test_book.py \
		-p no:cacheprovider

# Re-execute the committed notebooks in place, in quick mode, to refresh stored outputs
# (CHAPTERS: only those; a notebook that fails is left as it was), and write their build
# report, book/build-report.csv.
refresh: install
	@$(PY) book/build.py refresh --jobs $(JOBS) --chapters "$(CHAPTERS)"

bench-compile: install
	$(PY) -m lib.bench compile

lint: install
	$(VENV)/bin/ruff check lib tests chapters book

clean:
	rm -rf _build
