# Two entry points do all set-up themselves: `make demo` and `make test`.
# Both create (or refresh, when pyproject.toml, experiments/pyproject.toml or constraints.txt change) the
# virtual environment in .venv, installing through constraints.txt, which pins torch/torchvision: the library
# with its test extras, and the research studies in experiments/ (the `pixelwise experiment` command).
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: venv demo test lint clean

$(STAMP): pyproject.toml experiments/pyproject.toml constraints.txt
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -c constraints.txt -e ".[test]"
	$(BIN)/python -m pip install --quiet -c constraints.txt -e ./experiments
	touch $(STAMP)

venv: $(STAMP)

demo: venv
	$(BIN)/pixelwise demo --out outputs/demo

lint: venv
	$(BIN)/ruff check src tests benchmarks experiments

test: lint
	$(BIN)/python -m pytest -q

clean:
	rm -rf $(VENV) build src/*.egg-info experiments/*.egg-info .pytest_cache .ruff_cache
