# The two set-up commands of the README: `make demo` and `make test`.
# Both create .venv with everything the project needs, from its own files.

PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin

.PHONY: demo serve test lint bench clean

$(BIN)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[test,demo]'
	touch $@

# The main job: until `als2otel demo` exists, the bridge on its defaults.
demo: $(BIN)/.installed
	$(BIN)/als2otel serve

serve: $(BIN)/.installed
	$(BIN)/als2otel serve $(if $(CONFIG),--config $(CONFIG))

lint: $(BIN)/.installed
	$(BIN)/ruff format --check src tests bench
	$(BIN)/ruff check src tests bench
	$(BIN)/mypy

test: lint
	$(BIN)/pytest -q -p no:cacheprovider

bench: $(BIN)/.installed
	$(BIN)/python bench/pipeline.py

clean:
	rm -rf $(VENV) build *.egg-info
