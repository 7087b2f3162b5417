# fedplug's two commands: `make demo` and `make test` (both set everything up from a fresh clone).
PYTHON ?= python3.11
VENV ?= .venv
BIN := $(VENV)/bin
export PIP_CONSTRAINT := $(CURDIR)/constraints.txt
export PIP_DISABLE_PIP_VERSION_CHECK := 1

PLUGINS := plugins/torch_plan plugins/sklearn_plan plugins/flamby_datasets plugins/secagg \
	plugins/grpc plugins/demo plugins/tensorboard plugins/mlflow plugins/ray
PYPROJECTS := core/pyproject.toml $(foreach d,$(PLUGINS),$(d)/pyproject.toml)
STAMP := $(VENV)/.fedplug-installed

.PHONY: demo test test-fast bench lint format clean

$(STAMP): $(PYPROJECTS) constraints.txt requirements-dev.txt
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet torch==2.13.0
	$(BIN)/python -m pip install --quiet -e "./core[plot]" $(foreach d,$(PLUGINS),-e ./$(d)) -r requirements-dev.txt
	touch $@

demo: $(STAMP)
	$(BIN)/fedplug demo

test: $(STAMP)
	$(BIN)/python -m pytest

# the inner loop: core and the plan plugins' unit tests, no end-to-end runs (under 2 min on 2 cores)
test-fast: $(STAMP)
	$(BIN)/python -m pytest -q -m "not slow" tests/core tests/sklearn_plan tests/torch_plan

bench: $(STAMP)
	$(BIN)/python bench/workloads.py

# bench/ray.py's Flower column: Flower 1.42's simulation in its own environment (it pins another
# Ray than fedplug-ray), torch still the CPU pin
FLOWER_VENV := bench/.venv-flower
$(FLOWER_VENV)/.installed: bench/flower-requirements.txt
	test -x $(FLOWER_VENV)/bin/python || $(PYTHON) -m venv $(FLOWER_VENV)
	env -u PIP_CONSTRAINT $(FLOWER_VENV)/bin/python -m pip install --quiet -r bench/flower-requirements.txt
	touch $@

bench-ray: $(STAMP) $(FLOWER_VENV)/.installed
	$(BIN)/python bench/ray.py --flower-python $(FLOWER_VENV)/bin/python

lint: $(STAMP)
	$(BIN)/ruff check . && $(BIN)/ruff format --check .

format: $(STAMP)
	$(BIN)/ruff format . && $(BIN)/ruff check --fix .

clean:
	rm -rf $(VENV) $(FLOWER_VENV) .pytest_cache .ruff_cache fedplug-demo
