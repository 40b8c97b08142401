# `make run` and `make test` each set themselves up first (venv, packages, offline data).
PY      ?= python3
VENV    ?= .venv
BIN     := $(VENV)/bin
STAMP   := $(VENV)/.installed
TORCH   ?= torch==2.14.1 torchvision==0.29.1
FMNIST  := /usr/share/datasets/fashion-mnist/t10k-images-idx3-ubyte.gz
CIFAR10_MAKER := ../shared/data/cifar10/make_cifar10.py
METHOD  ?= dfq
ARGS    ?=

.PHONY: run bench test test-all setup data chromium lint wheel clean

setup: $(STAMP) data

$(STAMP): pyproject.toml
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q $(TORCH)
	$(BIN)/pip install -q -e ".[dev]"
	touch $(STAMP)

# Fashion-MNIST from Debian's package when apt is usable; torchvision downloads it otherwise.
# CIFAR-10 in the official batch layout under data/, from the offline copy beside the repo when
# there is one (data=cifar10 downloads it otherwise).
data: $(STAMP)
	@if [ ! -f $(FMNIST) ] && command -v apt-get >/dev/null 2>&1 && [ "$$(id -u)" = 0 ]; then \
		apt-get update -qq && apt-get install -y -qq dataset-fashion-mnist >/dev/null; fi
	@if [ ! -f data/cifar-10-batches-py/test_batch ] && [ -f $(CIFAR10_MAKER) ]; then \
		$(BIN)/python $(CIFAR10_MAKER) data; fi

# Headless Chromium for the report.html rendering test (~100 MB, so only the tests ask for it);
# where it cannot be installed that one test is skipped.
chromium:
	@if ! command -v chromium >/dev/null 2>&1 && command -v apt-get >/dev/null 2>&1 && [ "$$(id -u)" = 0 ]; then \
		(apt-get update -qq && apt-get install -y -qq chromium >/dev/null) \
		|| echo "chromium could not be installed: the report rendering test will be skipped"; fi

# The main job: a data-free distillation on the embedded default (Fashion-MNIST, LeNet-5-BN ->
# LeNet-5-half, DFQ: generator ensemble, 8-bit fake-quantised student exported as int8 TorchScript;
# about 4 minutes on 2 cores with bf16 kernels, 13-19 without).
run: setup
	$(BIN)/dfkd-train method=$(METHOD) $(ARGS)

# Every data-free method (+ kd, scratch) on the default setting, into outputs/bench/<time>/
# (benchmark.md, report.html); e.g. make bench ARGS="budget_s=120 methods=[kd,dafl]"
bench: setup
	$(BIN)/dfkd-bench $(ARGS)

# The test suite without the slow tests; `make test-all` runs everything.
test: setup chromium
	WANDB_MODE=disabled $(BIN)/pytest -q -m "not slow" $(ARGS)

test-all: setup chromium
	WANDB_MODE=disabled $(BIN)/pytest -q $(ARGS)

lint: setup
	$(BIN)/ruff check src tests

# dist/dfkd_lab-<version>-py3-none-any.whl, configs and shipped teachers inside (docs/install.md)
wheel: $(STAMP)
	$(BIN)/pip wheel --no-deps --no-build-isolation -q -w dist .

clean:
	rm -rf $(VENV) outputs multirun .pytest_cache build dist
