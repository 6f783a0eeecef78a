# Sluice: `make demo` runs the default pipeline locally, `make test` runs every test.
PLUGINS := normalize enrich categorize totals testguest
# Test fixtures: a WASI command (a component of another world) and a second
# version of categorize (fallback category `Uncategorized`).
FIXTURES := wasi-command
WASM_TARGET := wasm32-wasip2
DIST := plugins/dist

.PHONY: all build host plugins demo test setup fmt clean image

all: build

setup:
	bash scripts/setup.sh

build: host plugins

host:
	cargo build --release -p sluice

plugins:
	mkdir -p $(DIST)
	cargo build --release --target $(WASM_TARGET) -p categorize --features uncategorized
	cp target/$(WASM_TARGET)/release/categorize.wasm $(DIST)/categorize-uncategorized.wasm
	cargo build --release --target $(WASM_TARGET) $(addprefix -p ,$(PLUGINS) $(FIXTURES))
	for p in $(PLUGINS) $(FIXTURES); do cp target/$(WASM_TARGET)/release/$$p.wasm $(DIST)/$$p.wasm; done

demo: setup build
	bash scripts/demo.sh

test: setup build
	cargo fmt --all -- --check
	bash scripts/check-deploy.sh
	bash scripts/test.sh

fmt:
	cargo fmt --all

clean:
	cargo clean
	rm -rf $(DIST)

# The host container (needs a Docker engine).
image:
	docker build -t sluice:0.1.0 .
