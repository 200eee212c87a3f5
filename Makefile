# The two commands of the README: `make quickstart` and `make test`.
# Both keep the project's environment in .venv/ and install only what is missing
# (a stamp file records the last install; it is redone when pyproject.toml or constraints.txt change).
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.danlu-installed
ASSETS := minilm-l6 smollm2-135m rotten-tomatoes wnut-ner wiki-sample conll2003 squad peoples-daily chinese-sentiment counter-fitted keyboard-typos alpaca-en alpaca-zh xsum-sample
# pip extras of danlu to install (pyproject.toml): `make setup EXTRAS=dev` leaves out the trackers of --report-to
EXTRAS ?= dev,tracking
# One lock for every timed benchmark (the scripts' own docstrings name it too): two at once on 2 cores skew both.
CPU_LOCK := /tmp/danlu-cpu.lock

.PHONY: setup quickstart test bench bench-compress bench-serve-setup bench-serve bench-gguf-setup bench-gguf bench-sft-setup bench-sft clean chromium FORCE

setup: $(STAMP) chromium

$(PY):
	$(PYTHON) -m venv $(VENV)

# The extras of the last install: rewritten, so that the install is redone, only when EXTRAS changes.
$(VENV)/.danlu-extras: FORCE | $(PY)
	@echo '$(EXTRAS)' | cmp -s - $@ || echo '$(EXTRAS)' > $@

$(STAMP): $(PY) pyproject.toml constraints.txt $(VENV)/.danlu-extras
	# torch first, pinned: an unpinned torch would pull a multi-gigabyte CUDA build.
	$(PY) -m pip install -q --disable-pip-version-check torch==2.13.0
	$(PY) -m pip install -q --disable-pip-version-check -c constraints.txt -e '.[$(EXTRAS)]'
	$(VENV)/bin/danlu assets install $(ASSETS)
	touch $(STAMP)

# Debian packages: headless Chromium, which the page tests drive (tests/browser.py), and WordNet's text
# database (attacks, EDA); nothing to do when both are present.
chromium:
	@{ command -v chromium >/dev/null 2>&1 && test -e /usr/share/wordnet/data.noun; } \
		|| { apt-get update -qq && apt-get install -y -qq --no-install-recommends chromium wordnet-base; } \
		|| echo "warning: could not install chromium/wordnet-base (apt-get as root); their tests will be skipped"

quickstart: $(STAMP)
	$(VENV)/bin/danlu run --overwrite

# bench-gguf-setup: llama.cpp (the prebuilt xllamacpp wheel, in its own venv) loads danlu's GGUF exports in a test.
test: setup bench-gguf-setup
	$(PY) -m pytest -q tests

bench: $(STAMP)
	$(PY) benchmarks/finetune_vs_hf.py
	$(PY) benchmarks/pretrain_throughput.py

# danlu compress's chosen variant vs PyTorch fp32 / dynamic int8 / optimum-onnx (which pins transformers
# 4.57, so it gets its own venv, made by --setup). COMPRESS_OUT is a `danlu compress --out` folder.
COMPRESS_OUT ?= runs/compress
bench-compress: $(STAMP)
	test -x /work/bench-venv-optimum/bin/python || $(PY) benchmarks/compress_vs_peers.py --setup
	flock $(CPU_LOCK) $(PY) benchmarks/compress_vs_peers.py --variant $(COMPRESS_OUT)/chosen

# llama.cpp for the serving benchmark lives in its own venv (never the project's), built with flags that work here.
bench-serve-setup: $(STAMP)
	$(PY) benchmarks/serve_load.py --setup --servers danlu --levels 1 --duration 1 --rounds 1 --out /tmp/serve_load_setup.json

bench-serve: $(STAMP)
	flock $(CPU_LOCK) $(PY) benchmarks/serve_load.py

# llama.cpp for benchmarks/gguf_llamacpp.py and tests/test_export_gguf_llamacpp.py: the xllamacpp wheel (upstream
# llama.cpp's server linked into a Cython module, prebuilt, no dependencies), in its own small venv.
XLLAMA_VENV ?= /work/bench-venv-xllama
bench-gguf-setup:
	@$(XLLAMA_VENV)/bin/python -c "import xllamacpp" 2>/dev/null || { \
		{ test -x $(XLLAMA_VENV)/bin/python || $(PYTHON) -m venv $(XLLAMA_VENV); } \
		&& $(XLLAMA_VENV)/bin/python -m pip install -q --disable-pip-version-check xllamacpp==2026.10.11549; } \
		|| echo "warning: could not install xllamacpp in $(XLLAMA_VENV); the llama.cpp GGUF test will be skipped"

bench-gguf: $(STAMP)
	test -x $(XLLAMA_VENV)/bin/python || $(MAKE) bench-gguf-setup
	flock $(CPU_LOCK) $(PY) benchmarks/gguf_llamacpp.py --llama-python $(XLLAMA_VENV)/bin/python

# TRL's SFTTrainer for benchmarks/sft_vs_trl.py, in its own venv (its transformers/peft pins are not ours);
# danlu is installed there too (editable), since the worker reads the data and scores with danlu's code.
TRL_VENV ?= /work/bench-venv-trl
bench-sft-setup: $(STAMP)
	test -x $(TRL_VENV)/bin/python || $(PYTHON) -m venv $(TRL_VENV)
	$(TRL_VENV)/bin/python -m pip install -q --disable-pip-version-check torch==2.13.0
	$(TRL_VENV)/bin/python -m pip install -q --disable-pip-version-check trl peft datasets -e .

bench-sft: $(STAMP)
	test -x $(TRL_VENV)/bin/python || $(MAKE) bench-sft-setup
	flock $(CPU_LOCK) $(PY) benchmarks/sft_vs_trl.py --trl-python $(TRL_VENV)/bin/python

clean:
	rm -rf $(VENV) build *.egg-info
