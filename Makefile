# The two commands: `make demo` and `make test`. Both create .venv and install everything.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
export MLFLOW_DISABLE_TELEMETRY := true
export DO_NOT_TRACK := 1
export DVC_NO_ANALYTICS := 1

.PHONY: demo test lint unit e2e bench install clean

# --no-compile: pip writes no bytecode for the ~20k modules it installs (over a minute on two cores);
# the few thousand that are imported compile on first use.
$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q --no-compile -e '.[dev]'
	touch $(STAMP)

install: $(STAMP)

# Label Studio pins older NumPy/PyArrow than radflow: it gets its own venv, which `radflow annotate server` and
# tests/label_studio.py start it from (its own .gitignore keeps it out of git).
LS_VENV := .venv-label-studio
# Its pip install needs nothing of radflow's venv, so `make -j2` runs the two installs side by side.
LS_STAMP := $(LS_VENV)/.installed
LS_PIP := $(LS_VENV)/.installed-pip
$(LS_PIP):
	test -x $(LS_VENV)/bin/python || $(PY) -m venv $(LS_VENV)
	echo '*' > $(LS_VENV)/.gitignore
	$(LS_VENV)/bin/python -m pip install -q --no-compile 'label-studio==1.23.*'
	touch $(LS_PIP)
$(LS_STAMP): $(LS_PIP) | $(STAMP)
	$(BIN)/python -m radflow.annotate.server --make-template
	touch $(LS_STAMP)

.PHONY: label-studio
label-studio: $(LS_STAMP)
install: $(LS_STAMP)
test: $(LS_STAMP)
e2e: $(LS_STAMP)

demo: $(STAMP)
	$(BIN)/radflow demo

lint: $(STAMP)
	$(BIN)/ruff check src tests bench
	$(BIN)/ruff format --check src tests bench
	$(BIN)/mypy

# The unit tests only: no servers, browsers or pipeline runs (every e2e test lives under tests/e2e).
unit: $(STAMP)
	$(BIN)/pytest -q -m "not e2e" --durations=10

e2e: $(STAMP)
	$(BIN)/pytest -q tests/e2e --durations=10

# Everything CI runs: lint, then the whole suite (unit and e2e) in one session, so servers start once.
# Two workers (tests/conftest.py groups the tests by file and shared fixture): the suite waits on servers and
# subprocesses much of the time, so two cores keep busier. TEST_WORKERS=0 runs it in this process.
TEST_WORKERS ?= 2
test: lint $(STAMP)
	$(BIN)/pytest -q -n $(TEST_WORKERS) --dist loadscope --durations=40

# The benches also need the `bench` extra (LitServe, psutil); bench/serve.py installs wrk itself (apt-get).
BENCH_STAMP := $(VENV)/.installed-bench
$(BENCH_STAMP): $(STAMP)
	$(BIN)/python -m pip install -q --no-compile -e '.[dev,bench]'
	touch $(BENCH_STAMP)

bench: $(BENCH_STAMP)
	@for f in bench/*.py; do echo "== $$f"; $(BIN)/python $$f || exit 1; done

clean:
	rm -rf $(VENV) build dist src/*.egg-info .pytest_cache .mypy_cache .ruff_cache
