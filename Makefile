# The two commands in the README: `make image` (build the default device image) and `make test`.
RECIPE ?= recipes/generic-x86-64.toml
OUT ?= out
PYTEST_ARGS ?=
# Two workers (pytest-xdist): whole files and xdist_group groups, longest first
# (tests/scheduling.py). Serial: `make test PYTEST_XDIST=` (or PYTEST_ARGS="-n 0").
PYTEST_XDIST ?= -n 2 --dist loadgroup

.PHONY: image test lint bootstrap demo

bootstrap:
	bash tools/bootstrap.sh

image: bootstrap
	.venv/bin/kiln build $(RECIPE) -o $(OUT)

# Build the QEMU profile of the default image (test-pattern camera, no OpenCV) and boot it in
# QEMU, following its serial console (Ctrl-C = power cut).
demo: bootstrap
	.venv/bin/kiln build recipes/qemu-x86-64.toml -o $(OUT)-qemu
	.venv/bin/kiln vm $$(ls -t $(OUT)-qemu/*.img | head -n 1)

test: bootstrap
	.venv/bin/python -m pytest $(PYTEST_XDIST) $(PYTEST_ARGS)

lint: bootstrap
	.venv/bin/ruff check appliance image tools tests
	.venv/bin/ruff format --check appliance image tools tests
	.venv/bin/mypy appliance image
