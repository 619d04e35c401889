# Two commands do all set-up on a fresh machine: `make demo` and `make test`.
# TORCH_SPEC picks the torch build; the default is the CPU wheel this project's machines carry.
# Elsewhere:  make test TORCH_SPEC="torch>=2.4"   (or any pip requirement spec)
PYTHON ?= python3
VENV ?= .venv
TORCH_SPEC ?= torch==2.13.0
PY := $(VENV)/bin/python
STAMP := $(VENV)/.cnclip-installed

.PHONY: demo test lint install clean chromium

install: $(STAMP)

# Re-runs only when the packaging metadata changes (idempotent).
$(STAMP): setup.cfg pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet "$(TORCH_SPEC)"
	$(PY) -m pip install --quiet --no-deps cn-clip==1.6.0
	$(PY) -m pip install --quiet -e ".[test,faiss,onnx,report,serve,browser,lmdb]"
	# torchvision's code for the official reference only (tests/official_ref.py), outside site-packages.
	$(PY) -m pip install --quiet --no-deps --target $(VENV)/cnclip-reference torchvision==0.28.0
	touch $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/cnclip-lora demo

# Headless Chromium + chromedriver for the browser tests (Debian packages); skipped when present.
# Without root/apt-get the browser tests skip and say why.
chromium:
	@test -x /usr/bin/chromium -a -x /usr/bin/chromedriver || { \
	  SUDO=$$( [ "$$(id -u)" = 0 ] || echo "sudo -n" ); command -v apt-get >/dev/null && \
	  $$SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq --no-install-recommends \
	    chromium chromium-driver fonts-noto-cjk || echo "chromium not installed: the browser tests will be skipped"; }

# Lint and format check first (seconds): the configuration is pyproject.toml's [tool.ruff].
lint: $(STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

test: $(STAMP) chromium lint
	$(PY) -m pytest -q --durations=10

clean:
	rm -rf demo_output prediction_result .cnclip_cache
