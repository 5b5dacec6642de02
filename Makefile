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

.PHONY: install demo lint test bench clean

$(VENV)/.installed: pyproject.toml Makefile
	test -x $(PY) || python3 -m venv $(VENV)
	$(PIP) install -q --upgrade pip
	$(PIP) install -q $(PIP_FLAGS) -e '.[dev,ros,hardware,splats,perception]'
	# Editable installs skip data files: register the ROS 2 package `twin` in the venv (ament index).
	$(VENV)/bin/twinrank live install-ament
	# The Panda meshes/MJCF ship in this wheel; its own deps (dm_control, panda-py...) are not needed.
	$(PIP) install -q --no-deps 'dm-robotics-panda==0.4.8'
	touch $@

install: $(VENV)/.installed franka-sim

demo: install
	$(VENV)/bin/twinrank demo

# ruff (lint + format) and the import contracts of pyproject.toml (layers; nothing imports the CLI)
lint: install
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/lint-imports

test: install lint
	scripts/isolated $(PY) -m pytest -q $(PYTEST_ARGS)

bench: install
	$(PY) -m benchmarks

clean:
	rm -rf $(VENV) $(FRANKA_SIM_VENV) *.egg-info .pytest_cache

# Live-twin hardware (twin/live/HARDWARE.md): franky and pyrealsense2 come with the main venv
# (the `hardware` extra); franka-sim, the simulated FR3 behind use_fake_hardware and the
# bridge tests, in its own venv (it pins numpy 1.26 and mujoco < 3.3). franka-sim loads the
# repo's mesh-free FR3 model (twin/assets/fr3/fr3.xml), so nothing is downloaded at run time.
.PHONY: franka-sim
FRANKA_SIM_VENV ?= .venv-franka-sim

$(FRANKA_SIM_VENV)/.installed: scripts/franka_sim_server.py
	test -x $(FRANKA_SIM_VENV)/bin/python || python3 -m venv $(FRANKA_SIM_VENV)
	$(FRANKA_SIM_VENV)/bin/python -m pip install -q --upgrade pip
	$(FRANKA_SIM_VENV)/bin/python -m pip install -q $(PIP_FLAGS) 'franka-sim==1.1.7'
	$(FRANKA_SIM_VENV)/bin/python -c "import franka_sim"
	touch $@

franka-sim: $(FRANKA_SIM_VENV)/.installed
