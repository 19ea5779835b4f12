# Two entry points: `make demo` and `make test`. Both create .venv when absent.
# torch is pinned here: an unpinned torch pulls a multi-GB CUDA build.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
TORCH_PIN := torch==2.13.0
# the pretrained speaker encoder's weights (model kind `pretrained`): the wheel alone, without its
# dependencies (webrtcvad is a C extension mmdistill does not use; the package is never imported)
RESEMBLYZER_PIN := resemblyzer==0.1.4

.PHONY: demo test venv clean

$(VENV)/.installed: pyproject.toml Makefile
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q "$(TORCH_PIN)"
	$(PY) -m pip install -q -e ".[dev]" "$(TORCH_PIN)"
	$(PY) -m pip install -q --no-deps "$(RESEMBLYZER_PIN)"
	touch $@

venv: $(VENV)/.installed

demo: venv
	$(VENV)/bin/mmdistill demo --out runs/demo --overwrite

test: venv
	$(PY) -m pytest -n 2 -q

clean:
	rm -rf $(VENV) runs .pytest_cache
