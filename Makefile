# The two set-up commands of the README: `make demo` and `make test`.
# Both create .venv with everything the project needs, from its own files.

PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin

.PHONY: demo serve test lint bench clean system-deps

$(BIN)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[test,demo]'
	touch $@

# The main job: bookinfo on real Envoys with the bridge in the middle; topology at :9464/topology.
demo: $(BIN)/.installed
	$(BIN)/als2otel demo

serve: $(BIN)/.installed
	$(BIN)/als2otel serve $(if $(CONFIG),--config $(CONFIG))

lint: $(BIN)/.installed
	$(BIN)/ruff format --check src tests bench
	$(BIN)/ruff check src tests bench
	$(BIN)/mypy

# Debian's chromium renders /topology in the page test; Debian's prometheus scrapes /metrics.
SYSTEM_PACKAGES := chromium prometheus
system-deps:
	@missing=""; for p in $(SYSTEM_PACKAGES); do command -v $$p >/dev/null 2>&1 || missing="$$missing $$p"; done; \
	if [ -n "$$missing" ]; then \
	  echo "installing Debian's$$missing for the end-to-end tests"; \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq$$missing >/dev/null; \
	fi

test: lint system-deps
	$(BIN)/pytest -q -p no:cacheprovider

bench: $(BIN)/.installed
	$(BIN)/python bench/pipeline.py
	$(BIN)/python bench/instructions.py
	$(BIN)/python bench/instructions.py --peers
	$(BIN)/python bench/memory.py
	$(BIN)/python bench/stall.py

clean:
	rm -rf $(VENV) build *.egg-info
