# make demo   describe a generated image set end to end (demo/features.h5), then train SVMs on it
# make test   run the tests
# make clean  remove demo output and caches (keeps .venv)
# make test-oldest  the tests with the oldest torch, torchvision and NumPy that pyproject.toml admits
#                   (in .venv-oldest; several GB and a few minutes more)
# make test-oldest-stages  those of them that CI runs: the stages the releases' differences reach
# make oldest-venv  only install .venv-oldest (CI does while the main tests run)
#
# The first target that needs it creates .venv and installs vggfeat with its test extra; torch
# from PyPI is the CUDA build (several GB, a few minutes), which also runs on CPU-only machines.
# The install is editable, of this checkout: VENV=<another checkout's venv> makes that venv run
# this checkout's vggfeat (its stamp is older than this pyproject.toml) until it is installed again.

PYTHON ?= python3
VENV ?= .venv
# Written once the install succeeds; a newer pyproject.toml, or a missing stamp, reinstalls.
STAMP := $(VENV)/.vggfeat-installed

.PHONY: venv oldest-venv demo test test-oldest test-oldest-stages clean

venv: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(VENV)/bin/python || $(PYTHON) -m venv $(VENV)
	$(VENV)/bin/python -m pip install -e '.[test]'
	touch $@

demo: venv
	VENV=$(VENV) bash examples/demo.sh

test: venv
	$(VENV)/bin/python -m pytest -q

# The floor of pyproject.toml's ranges, each dependency at its oldest release admitted; torchcodec
# (the test extra) needs a newer torch, and pillow-heif 1 a newer Pillow, so the test tools come
# one by one. Tests of optional libraries (TorchCodec, nvImageCodec, pillow-heif) are skipped.
# torch 2.2 has wheels for Python 3.8 to 3.12.
OLDEST := torch==2.2.2 torchvision==0.17.2 numpy==1.24.0 h5py==3.8.0 pillow==10.0.0 click==8.2.0 tqdm==4.60.0 \
	scikit-learn==1.7.0 scipy==1.10.0 matplotlib==3.7.0 pytest faiss-cpu pyarrow
# Where NumPy 1's copy semantics, torchvision 0.17's JPEG decoding and torch 2.2 differ from the newest
# (about a minute): `make test-oldest-stages`, which CI runs.
OLDEST_TESTS := tests/test_svm.py tests/test_jpeg.py tests/test_decode.py tests/test_extractor.py tests/test_job.py \
	tests/test_store.py tests/test_transfer_cli.py tests/test_regions.py tests/test_voc.py
TESTS ?= tests
# Written once the install succeeds, as $(STAMP): CI installs it while the main tests run.
OLDEST_STAMP := .venv-oldest/.vggfeat-installed
oldest-venv: $(OLDEST_STAMP)

$(OLDEST_STAMP): pyproject.toml Makefile
	test -x .venv-oldest/bin/python || $(PYTHON) -m venv .venv-oldest
	.venv-oldest/bin/python -m pip install $(OLDEST) -e .
	touch $@

test-oldest: oldest-venv
	.venv-oldest/bin/python -m pytest -q $(TESTS)

test-oldest-stages:
	$(MAKE) test-oldest TESTS="$(OLDEST_TESTS)"

clean:
	rm -rf demo build .pytest_cache
	find . -path ./$(VENV) -prune -o -name __pycache__ -type d -prune -exec rm -rf {} +
