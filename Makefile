# make demo   describe a generated image set end to end (demo/features.h5), then train SVMs on it
# make test   run the tests
# make clean  remove demo output and caches (keeps .venv)
#
# The first target that needs it creates .venv and installs vggfeat with its test extra; torch
# from PyPI is the CUDA build (several GB, a few minutes), which also runs on CPU-only machines.

PYTHON ?= python3
VENV ?= .venv
# Written once the install succeeds; a newer pyproject.toml, or a missing stamp, reinstalls.
STAMP := $(VENV)/.vggfeat-installed

.PHONY: venv demo test clean

venv: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(VENV)/bin/python || $(PYTHON) -m venv $(VENV)
	$(VENV)/bin/python -m pip install -e '.[test]'
	touch $@

demo: venv
	VENV=$(VENV) bash examples/demo.sh

test: venv
	$(VENV)/bin/python -m pytest -q

clean:
	rm -rf demo build .pytest_cache
	find . -path ./$(VENV) -prune -o -name __pycache__ -type d -prune -exec rm -rf {} +
