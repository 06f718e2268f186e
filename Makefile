# lphi-edge developer entry points. `make test` and `make demo` work on a fresh clone.
PYTHON ?= python3.11
VENV   := .venv
PY     := $(VENV)/bin/python
PIP    := $(PY) -m pip
STAMP  := $(VENV)/.installed

.PHONY: test demo venv clean

venv: $(STAMP)

# (Re)install when the project metadata changes; editable so console scripts track the tree.
$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP) install -q --upgrade pip
	$(PIP) install -q "torch==2.13.0"
	$(PIP) install -q -e ".[test]"
	touch $(STAMP)

test: $(STAMP)
	$(PY) -m pytest -q $(PYTEST_ARGS)

# For now: a tiny random-weight LLaVA-Phi checkpoint answers about the shipped sample frame.
# (Issue 4 replaces this with the trained shapes-demo model; its answers are noise until then.)
demo: $(STAMP)
	$(PY) -m lphi_edge.model.tiny .cache/tiny-llava-phi
	$(VENV)/bin/lphi-ask --model .cache/tiny-llava-phi \
	    --image lphi_edge/assets/sample_frame.png \
	    --prompt "What shape is in the image?" --max-new-tokens 12

clean:
	rm -rf $(VENV) .cache .pytest_cache
