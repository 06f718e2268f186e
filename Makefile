# lphi-edge developer entry points. `make test` and `make demo` work on a fresh clone.
PYTHON ?= python3.11
VENV   := .venv
PY     := $(VENV)/bin/python
PIP    := $(PY) -m pip
STAMP  := $(VENV)/.installed

.PHONY: test lint demo venv clean ros2_ws/install

venv: $(STAMP)

# (Re)install when the project metadata changes; editable so console scripts track the tree.
$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP) install -q --upgrade pip
	$(PIP) install -q "torch==2.13.0"
	$(PIP) install -q -e ".[test]"
	touch $(STAMP)

# Ruff (lint + format) and the import layers (pyproject.toml [tool.importlinter]) before the suite.
lint: $(STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check --exclude '*.md' .
	$(VENV)/bin/lint-imports

# The ROS 2 workspace (ros2_ws/README.md): colcon builds lphi_edge_interfaces and lphi_edge from the PyPI wheels
# into ros2_ws/install, so `source ros2_ws/install/setup.bash` works; the ROS tests start what it installs.
ROS_SOURCES := $(shell find ros2_ws/src -type f -not -path '*/__pycache__/*')

ros2_ws/install: ros2_ws/install/setup.bash

ros2_ws/install/setup.bash: $(STAMP) ros2_ws/build.sh $(ROS_SOURCES)
	ros2_ws/build.sh $(VENV)

test: lint ros2_ws/install/setup.bash
	$(PY) -m pytest -q $(PYTEST_ARGS)

# The shipped shapes-demo model (lphi_edge/assets/shapes_demo, trained by train/shapes_demo.sh)
# answers questions about the shipped sample frame (a red circle and a blue square), then the ROS 2
# node runs it via onnxruntime on the synthetic camera's frames (lphi-ros-demo exits by itself).
demo: $(STAMP)
	$(VENV)/bin/lphi-ask --model shapes-demo --image lphi_edge/assets/sample_frame.png \
	    --prompt "How many shapes are there?" --max-new-tokens 8
	$(VENV)/bin/lphi-ask --model shapes-demo --image lphi_edge/assets/sample_frame.png \
	    --prompt "What color is the circle?" --max-new-tokens 8
	$(VENV)/bin/lphi-ask --model shapes-demo --image lphi_edge/assets/sample_frame.png \
	    --prompt "Is there a blue square?" --max-new-tokens 8
	$(VENV)/bin/lphi-ros-demo

clean:
	rm -rf $(VENV) .cache .pytest_cache
