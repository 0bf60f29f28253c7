# Two entry points for a fresh machine: `make demo` and `make test` (`make docs` builds the site).
# Both create .venv on first use and are no-ops for the install the second time.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip
STAMP := $(VENV)/.installed
# torch/torchvision are pinned here (wheels available offline on our machines), not in pyproject.
TORCH_PINS := torch==2.14.1 torchvision==0.29.1
RSHF_PIN := rshf==0.2.2
PYTEST_ARGS ?= -m "not slow"

.PHONY: setup test test-all demo bench docs docs-serve notebooks clean

setup: $(STAMP)

$(STAMP): pyproject.toml Makefile
	# The explorer's browser test drives Debian's headless Chromium (root on a fresh machine, as CI runs).
	test -x /usr/bin/chromedriver || (apt-get update && apt-get install -y chromium chromium-driver)
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP) install -q --disable-pip-version-check $(TORCH_PINS)
	$(PIP) install -q --disable-pip-version-check -e ".[dev,notebooks,docs,explore]" "dask-jobqueue>=0.8"
	# rshf's own pins drag in torchaudio/open_clip and pin torch: install it without them.
	$(PIP) install -q --disable-pip-version-check --no-deps $(RSHF_PIN)
	touch $(STAMP)

test: $(STAMP)
	$(PY) -m mypy
	$(PY) -m pytest $(PYTEST_ARGS)

test-all: $(STAMP)
	$(PY) -m mypy
	$(PY) -m pytest

demo: $(STAMP)
	$(VENV)/bin/rsembed-dask demo --out demo_out

# The notebooks executed as the test run executes them (tests/e2e/test_notebooks.py keeps each
# executed copy in build/notebooks/, which the docs render); run once when a copy is missing.
NOTEBOOKS := $(patsubst notebooks/%.ipynb,build/notebooks/%.ipynb,$(wildcard notebooks/*.ipynb))

notebooks: $(STAMP)
	$(PY) -m pytest -q -p no:cacheprovider tests/e2e/test_notebooks.py

# The documentation site, into site/: strict (a warning fails the build).
docs: $(STAMP)
	@for nb in $(NOTEBOOKS); do test -f $$nb || { $(MAKE) notebooks && break; }; done
	NO_MKDOCS_2_WARNING=1 $(VENV)/bin/mkdocs build --strict

docs-serve: $(STAMP)
	NO_MKDOCS_2_WARNING=1 $(VENV)/bin/mkdocs serve

bench: $(STAMP)
	for b in benchmarks/*.py; do echo "== $$b"; $(PY) $$b || exit 1; done

clean:
	rm -rf demo_out site build/notebooks .pytest_cache .mypy_cache
