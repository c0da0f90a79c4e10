# The newcomer's two commands: `make demo` and `make test`. Both create the venv on first use,
# installing the CPU build of torch FIRST (a later, unpinned torch would pull a multi-GB CUDA build).
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: install demo test test-fast lint clean

install: $(STAMP)

$(STAMP): pyproject.toml
	python3 -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet torch==2.13.0
	$(PY) -m pip install --quiet -e '.[test,s3,plots]'
	touch $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/timevec demo

# Every behaviour test (what CI runs). `make test-fast` skips the long end-to-end ones (marked slow).
test: $(STAMP)
	$(PY) -m pytest -q

test-fast: $(STAMP)
	$(PY) -m pytest -q -m "not slow"

lint: $(STAMP)
	$(VENV)/bin/ruff check .

clean:
	rm -rf $(VENV) runs
