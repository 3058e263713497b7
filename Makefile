# gpuhub's entry points. `make test` is the one command that runs every test.
VENV ?= .venv
export PATH := $(CURDIR)/$(VENV)/bin:$(PATH)
UV = $(VENV)/bin/uv

.PHONY: test test-fast setup lock images help bench

help:
	@echo "make test       install what the tests need, then run every test (as CI does)"
	@echo "make test-fast  only the tests that need no Docker engine"
	@echo "make images     build every image in the catalog with the mirrors from .env (BUILD_ARGS=--check: check only)"
	@echo "make lock       regenerate the hash-locked requirements from the *.in files"
	@echo "make bench      benchmarks: spawn, burst, API load, memory, image builds (docs/performance.md)"

test: setup
	python -m pytest

test-fast:
	python -m pytest -m "not e2e and not network"

setup:
	bash .ci/setup

# images/build in a venv of its own (python3 and its venv module are all a fresh Ubuntu
# host needs: `sudo apt-get install python3-venv`), from a hash-locked requirements file.
IMAGES_VENV ?= .venv-images
$(IMAGES_VENV)/.installed: images/requirements.txt
	python3 -m venv $(IMAGES_VENV) || { echo "make images: python3 -m venv failed; on Ubuntu: sudo apt-get install python3-venv" >&2; exit 1; }
	$(IMAGES_VENV)/bin/pip install -q --disable-pip-version-check --require-hashes -r images/requirements.txt
	touch $@

images: $(IMAGES_VENV)/.installed
	$(IMAGES_VENV)/bin/python images/build $(BUILD_ARGS)

$(UV):
	python3 -m venv $(VENV) && $(VENV)/bin/pip install -q uv

# Python 3.11/3.12 for the hub (universal), 3.8 on Linux x86-64 for the user image and
# for the stand-in of its base (as of the base's release, 2022-11).
lock: $(UV)
	cd images && ../$(UV) pip compile requirements.in --universal --python-version 3.10 --generate-hashes --custom-compile-command "make lock" -q -o requirements.txt
	cd hub && ../$(UV) pip compile requirements.in --universal --python-version 3.11 --generate-hashes --custom-compile-command "make lock" -q -o requirements.txt
	cd guard && ../$(UV) pip compile requirements.in --universal --python-version 3.11 --generate-hashes --custom-compile-command "make lock" -q -o requirements.txt
	cd tests && ../$(UV) pip compile requirements.in --python-version 3.11 --generate-hashes --custom-compile-command "make lock" -q -o requirements.txt
	cd images/tensorflow-2.9-gpu && ../../$(UV) pip compile requirements.in --python-version 3.8 --python-platform x86_64-manylinux_2_17 --only-binary :all: --generate-hashes -q -o requirements.txt --custom-compile-command "cd images/tensorflow-2.9-gpu && uv pip compile requirements.in --python-version 3.8 --python-platform x86_64-manylinux_2_17 --only-binary :all: --generate-hashes -o requirements.txt"
	cd tests/standin/tf-gpu-jupyter && ../../../$(UV) pip compile requirements.in --python-version 3.8 --python-platform x86_64-manylinux_2_17 --only-binary :all: --exclude-newer 2022-11-20 --generate-hashes -q -o requirements.txt --custom-compile-command "cd tests/standin/tf-gpu-jupyter && uv pip compile requirements.in --python-version 3.8 --python-platform x86_64-manylinux_2_17 --only-binary :all: --exclude-newer 2022-11-20 --generate-hashes -o requirements.txt"

# Spawn time, burst, API latency, memory and course image builds, side by side with a
# plain DockerSpawner hub and raw `docker run` (benchmarks/run.py, docs/performance.md).
.PHONY: bench
# More: make bench BENCH_ARGS="--burst 100 --rounds 10"
# The user server's own start-up with and without the workbench extensions, against the
# image as it was before them (BENCH_STARTUP_BEFORE, a revision; docs/performance.md).
BENCH_STARTUP_BEFORE ?= 564bd24
# The hub API during a burst, CPUs shared and the hub on a core of its own
# (benchmarks/cpusets.py; BENCH_CPUSET_ARGS="--rounds 2").
bench: setup
	python benchmarks/run.py $(BENCH_ARGS)
	python benchmarks/startup.py --before $(BENCH_STARTUP_BEFORE) $(BENCH_STARTUP_ARGS)
	python benchmarks/cpusets.py $(BENCH_CPUSET_ARGS)
