# Twinrank: `make demo` and `make test` set everything up from a clean clone.
SHELL := /bin/bash
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip
# Use the machine's local wheel cache when it has one (CPU torch lives there).
PIP_FLAGS := $(if $(wildcard /opt/wheels),--find-links /opt/wheels,)
export MUJOCO_GL ?= egl
export MLFLOW_DISABLE_TELEMETRY := true
export PYTHONDONTWRITEBYTECODE := 1

.PHONY: install demo test bench clean

$(VENV)/.installed: pyproject.toml Makefile
	test -x $(PY) || python3 -m venv $(VENV)
	$(PIP) install -q --upgrade pip
	$(PIP) install -q $(PIP_FLAGS) -e '.[dev]'
	# The Panda meshes/MJCF ship in this wheel; its own deps (dm_control, panda-py...) are not needed.
	$(PIP) install -q --no-deps 'dm-robotics-panda==0.4.8'
	touch $@

install: $(VENV)/.installed

demo: install
	$(VENV)/bin/twinrank demo

test: install
	scripts/isolated $(PY) -m pytest -q $(PYTEST_ARGS)

bench: install
	$(PY) -m benchmarks

clean:
	rm -rf $(VENV) *.egg-info .pytest_cache
