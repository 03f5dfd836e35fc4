# The two set-up commands of the README: `make demo` and `make test`.
# Both create .venv with everything the project needs, from its own files.

PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin

.PHONY: demo serve test quick lint bench clean system-deps compiled

# Pure Python, editable: an edit takes effect at once (`make compiled` builds what
# `pip install .` installs: the per-entry modules compiled by mypyc, see setup.py).
$(BIN)/.installed: pyproject.toml setup.py
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	ALS2OTEL_NO_EXTENSIONS=1 $(BIN)/pip install --quiet -e '.[test,demo]'
	touch $@

# The main job: bookinfo on real Envoys with the bridge in the middle; topology at :9464/topology.
demo: $(BIN)/.installed
	$(BIN)/als2otel demo

serve: $(BIN)/.installed
	$(BIN)/als2otel serve $(if $(CONFIG),--config $(CONFIG))

lint: $(BIN)/.installed
	$(BIN)/ruff format --check src tests bench scripts setup.py
	$(BIN)/ruff check src tests bench scripts setup.py
	$(BIN)/mypy

# Debian's chromium renders /topology in the page test; Debian's prometheus scrapes /metrics.
SYSTEM_PACKAGES := chromium prometheus
system-deps:
	@missing=""; for p in $(SYSTEM_PACKAGES); do command -v $$p >/dev/null 2>&1 || missing="$$missing $$p"; done; \
	if [ -n "$$missing" ]; then \
	  echo "installing Debian's$$missing for the end-to-end tests"; \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq$$missing >/dev/null; \
	fi

# A copy of the tree with the modules setup.py compiles built next to their sources.
COMPILED := build/compiled
compiled: $(BIN)/.installed
	rm -rf $(COMPILED) && mkdir -p $(COMPILED)
	cp -r src setup.py pyproject.toml README.md $(COMPILED)/
	cd $(COMPILED) && $(abspath $(BIN))/python setup.py --quiet build_ext --inplace

# All tests on the pure-Python modules; then the tests of the work the compiled modules do
# (translation, analysis, entry decoding, delivery to a default 4 MiB backend with replicas and
# pod churn, real Envoys end to end) again on the compiled build (tests/conftest.py refuses to
# run them there if a module is not the compiled one).
COMPILED_TESTS := tests/translation tests/analysis tests/receiver/test_normalize.py tests/receiver/test_fuzz.py tests/receiver/test_native.py \
  tests/receiver/test_hostile.py tests/receiver/test_otlp_logs.py tests/receiver/test_hostile_logs.py tests/export/test_delivery.py \
  tests/export/test_split.py \
  tests/e2e/test_linking.py tests/e2e/test_bookinfo_k8s.py
test: lint system-deps compiled
	$(BIN)/pytest -q -p no:cacheprovider
	ALS2OTEL_EXPECT_COMPILED=1 PYTHONPATH=$(COMPILED)/src $(BIN)/pytest -q -p no:cacheprovider $(COMPILED_TESTS)

# The fast part of the suite, for the edit-test loop: no real Envoy, Prometheus, Chromium or worker processes.
quick: lint
	$(BIN)/pytest -q -p no:cacheprovider --ignore=tests/e2e --ignore=tests/test_workers.py --ignore=tests/test_cli.py

bench: compiled
	$(BIN)/python bench/pipeline.py --streams 8 --compiled
	$(BIN)/python bench/pipeline.py --streams 64 --modes bare --workers 1,2 --compiled
	$(BIN)/python bench/instructions.py
	$(BIN)/python bench/instructions.py --compiled
	$(BIN)/python bench/instructions.py --peers
	$(BIN)/python bench/memory.py
	$(BIN)/python bench/stall.py
	$(BIN)/python bench/attacks.py

clean:
	rm -rf $(VENV) build *.egg-info
