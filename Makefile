# The two commands of the README: `make quickstart` and `make test`.
# Both keep the project's environment in .venv/ and install only what is missing
# (a stamp file records the last install; it is redone when pyproject.toml or constraints.txt change).
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.danlu-installed
ASSETS := minilm-l6 smollm2-135m rotten-tomatoes wnut-ner wiki-sample conll2003 squad counter-fitted keyboard-typos

.PHONY: setup quickstart test bench bench-compress bench-serve-setup bench-serve clean

setup: $(STAMP)

$(PY):
	$(PYTHON) -m venv $(VENV)

$(STAMP): $(PY) pyproject.toml constraints.txt
	# WordNet's text database (attacks, EDA) and headless Chromium (the pages' browser tests); Debian packages
	command -v apt-get >/dev/null && { test -e /usr/share/wordnet/data.noun && command -v chromium >/dev/null \
	  || { apt-get update -q && apt-get install -y -q --no-install-recommends wordnet-base chromium; }; } || true
	# torch first, pinned: an unpinned torch would pull a multi-gigabyte CUDA build.
	$(PY) -m pip install -q --disable-pip-version-check torch==2.13.0
	$(PY) -m pip install -q --disable-pip-version-check -c constraints.txt -e '.[dev]'
	$(VENV)/bin/danlu assets install $(ASSETS)
	touch $(STAMP)

quickstart: $(STAMP)
	$(VENV)/bin/danlu run --overwrite

test: $(STAMP)
	$(PY) -m pytest -q tests

bench: $(STAMP)
	$(PY) benchmarks/finetune_vs_hf.py
	$(PY) benchmarks/pretrain_throughput.py

# danlu compress's chosen variant vs PyTorch fp32 / dynamic int8 / optimum-onnx (which pins transformers
# 4.57, so it gets its own venv, made by --setup). COMPRESS_OUT is a `danlu compress --out` folder.
COMPRESS_OUT ?= runs/compress
bench-compress: $(STAMP)
	test -x /work/bench-venv-optimum/bin/python || $(PY) benchmarks/compress_vs_peers.py --setup
	flock /tmp/danlu-bench.lock $(PY) benchmarks/compress_vs_peers.py --variant $(COMPRESS_OUT)/chosen

# llama.cpp for the serving benchmark lives in its own venv (never the project's), built with flags that work here.
bench-serve-setup: $(STAMP)
	$(PY) benchmarks/serve_load.py --setup --servers danlu --levels 1 --duration 1 --rounds 1 --out /tmp/serve_load_setup.json

bench-serve: $(STAMP)
	flock /tmp/danlu-bench.lock $(PY) benchmarks/serve_load.py

clean:
	rm -rf $(VENV) build *.egg-info
