# adpredict: `make demo` runs the whole flow on generated data; `make test` runs the tests.
# Both create the virtual environment first if it is missing (about 3 GB, a few minutes).

PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
EMULATORS := .venv-emulators
WORK_DIR ?= demo_output
RECORDS ?= 5000

.PHONY: help venv emulators browser docs docs-build demo test fuzz bench bench-gpu lint format lock clean

help: ## List the targets
	@grep -E '^[a-z-]+:.*##' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-8s %s\n", $$1, $$2}'

$(BIN)/.installed: setup.py requirements.lock requirements-clouds.lock requirements-dask.lock requirements-dev.txt
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -r requirements.lock -r requirements-clouds.lock -r requirements-dask.lock -r requirements-dev.txt
	$(BIN)/pip install --quiet --no-deps -e .
	touch $@

venv: $(BIN)/.installed ## Create .venv with the pinned stack (requirements.lock)

$(EMULATORS)/.installed: requirements-emulators.txt
	$(PYTHON) -m venv $(EMULATORS)
	$(EMULATORS)/bin/pip install --quiet --upgrade pip
	$(EMULATORS)/bin/pip install --quiet -r requirements-emulators.txt
	touch $@

AZURITE := emulators/azurite/node_modules/.bin/azurite-blob
$(AZURITE): emulators/azurite/package.json emulators/azurite/package-lock.json
	npm ci --prefix emulators/azurite --no-fund --no-audit --loglevel=error
	touch $@

PROXY := .venv-proxy
$(PROXY)/.installed: requirements-proxy.txt
	$(PYTHON) -m venv $(PROXY)
	$(PROXY)/bin/pip install --quiet --upgrade pip
	$(PROXY)/bin/pip install --quiet -r requirements-proxy.txt
	touch $@

emulators: $(EMULATORS)/.installed $(AZURITE) $(PROXY)/.installed ## Local servers for the tests: Cloud Storage, BigQuery, S3 (moto), Azure (Azurite), a fault proxy

DOCS := .venv-docs
$(DOCS)/.installed: requirements-docs.txt
	$(PYTHON) -m venv $(DOCS)
	$(DOCS)/bin/pip install --quiet --upgrade pip
	$(DOCS)/bin/pip install --quiet -r requirements-docs.txt
	touch $@

# NO_MKDOCS_2_WARNING: Material's banner about its successor, printed on every build.
docs-build: $(DOCS)/.installed ## Build the docs site into site/ with warnings as errors (a broken link fails)
	NO_MKDOCS_2_WARNING=1 $(DOCS)/bin/mkdocs build --strict --quiet

docs: $(DOCS)/.installed ## Serve the docs site on http://127.0.0.1:8000, rebuilt on every edit
	NO_MKDOCS_2_WARNING=1 $(DOCS)/bin/mkdocs serve --strict

SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)
browser: ## Install headless Chromium (Debian package) for the report test
	command -v chromium >/dev/null || ($(SUDO) apt-get update && $(SUDO) apt-get install -y --no-install-recommends chromium)

demo: venv ## Generate data, analyze, train, export, predict (DirectRunner, local files)
	$(BIN)/adpredict demo --work_dir $(WORK_DIR) --records $(RECORDS)

test: venv emulators browser docs-build ## Run the test suite (includes lint, the import rule and the docs site build; starts the emulators it needs)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/lint-imports
	$(BIN)/pytest -q tests

FUZZ_EXAMPLES ?= 100000
fuzz: venv ## Long fuzzing campaign: FUZZ_EXAMPLES (100,000) random inputs per format (~1 h)
	FUZZ_EXAMPLES=$(FUZZ_EXAMPLES) $(BIN)/pytest -q -p no:cacheprovider tests/test_fuzz.py

bench: venv ## Throughput: predict vs bare model, peers, naive Beam, per-record, one file, bf16 vs fp32; 3 models (~35 min; BENCH_ARGS=--quick)
	$(BIN)/python -m bench.throughput $(BENCH_ARGS)
	$(BIN)/python -m bench.precision --work_dir bench/results/work --reuse --profile $(BENCH_ARGS)

bench-gpu: venv ## The heavy model on a GPU (where TensorFlow sees one): batch sweep, bare vs predict (<5 min there)
	$(BIN)/python -m bench.gpu $(BENCH_ARGS)

lint: venv ## ruff check + format check + the import rule (docs/architecture.md) + shellcheck
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/lint-imports
	$(BIN)/shellcheck run_dataflow.sh .ci/run

format: venv ## Apply ruff's formatting and import order
	$(BIN)/ruff check --fix .
	$(BIN)/ruff format .

# requirements-gpu.lock: the nvidia-* wheels of tensorflow[and-cuda] beside requirements.lock,
# resolved from package metadata (pip --dry-run: nothing downloaded or installed).
lock: ## Re-resolve requirements.lock from setup.py, and requirements-gpu.lock beside it, in a scratch venv
	rm -rf /tmp/adpredict-lock && $(PYTHON) -m venv /tmp/adpredict-lock
	/tmp/adpredict-lock/bin/pip install --quiet --upgrade pip
	/tmp/adpredict-lock/bin/pip install --quiet .
	{ grep '^#' requirements.lock; /tmp/adpredict-lock/bin/pip freeze --exclude-editable | grep -v '^adpredict'; } \
	    > /tmp/adpredict-lock/requirements.lock && mv /tmp/adpredict-lock/requirements.lock requirements.lock
	tf=$$(sed -n 's/^tensorflow==//p' requirements.lock) && { grep '^#' requirements-gpu.lock; \
	    echo "tensorflow[and-cuda]==$$tf"; /tmp/adpredict-lock/bin/pip install --quiet --dry-run --ignore-installed \
	    --report - -r requirements.lock "tensorflow[and-cuda]==$$tf" | /tmp/adpredict-lock/bin/python -c 'import json, sys; \
	    print("\n".join(sorted(p["metadata"]["name"] + "==" + p["metadata"]["version"] for p in json.load(sys.stdin)["install"] \
	    if p["metadata"]["name"].startswith("nvidia-"))))'; } > /tmp/adpredict-lock/requirements-gpu.lock \
	    && mv /tmp/adpredict-lock/requirements-gpu.lock requirements-gpu.lock

clean: ## Remove the demo output (keeps .venv)
	rm -rf $(WORK_DIR)
