# The two commands in the README: `make image` (build the default device image) and `make test`.
RECIPE ?= recipes/generic-x86-64.toml
OUT ?= out
PYTEST_ARGS ?=

.PHONY: image test lint bootstrap demo

bootstrap:
	bash tools/bootstrap.sh

image: bootstrap
	.venv/bin/kiln build $(RECIPE) -o $(OUT)

# Boot the default image in QEMU and follow its serial console (Ctrl-C = power cut).
demo: image
	.venv/bin/kiln vm $$(ls -t $(OUT)/*.img | head -n 1)

test: bootstrap
	.venv/bin/python -m pytest $(PYTEST_ARGS)

lint: bootstrap
	.venv/bin/ruff check appliance image tools tests
	.venv/bin/ruff format --check appliance image tools tests
	.venv/bin/mypy appliance image
