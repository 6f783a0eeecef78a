# Sluice: `make demo` runs the default pipeline locally, `make test` runs every test.
PLUGINS := normalize enrich categorize totals testguest dedup
# Test fixtures: a WASI command (a component of another world), a second
# version of categorize (fallback category `Uncategorized`) and the test
# guest built against contracts 0.5.0 (`testguest-packed`) and 0.6.0
# (`testguest-tables`).
FIXTURES := wasi-command
WASM_TARGET := wasm32-wasip2
DIST := plugins/dist
WIT := wit/plugin@0.1.0
# The contract with keyed state (0.1.0's types and host calls, plus `state`).
WIT_STATE := wit/plugin@0.2.0
# The Python and JavaScript example plugins' toolchains (scripts/setup.sh
# installs both).
COMPONENTIZE_PY := target/tools/venv/bin/componentize-py
COMPONENTIZE_JS := plugins/suspicious-js/node_modules/.bin/componentize-js

.PHONY: all build host plugins polyglot demo test setup fmt clean image

all: build

setup:
	bash scripts/setup.sh

# The Rust plugins need only cargo; the Python and JavaScript examples need
# componentize-py and componentize-js (scripts/setup.sh installs both).
build: host plugins polyglot

# The host, and `sluice-native-bench`: `sluice bench` with the default
# pipeline's stages also compiled natively, to measure what the sandbox costs
# (the host does not link the example's plugins). One cargo invocation, so
# that both, and `cargo test --workspace`, share one feature set and one
# build of the host.
host:
	cargo build --release -p sluice -p native-bench

plugins:
	mkdir -p $(DIST)
	cargo build --release --target $(WASM_TARGET) -p categorize --features uncategorized
	cp target/$(WASM_TARGET)/release/categorize.wasm $(DIST)/categorize-uncategorized.wasm
	cargo build --release --target $(WASM_TARGET) -p testguest --features packed
	cp target/$(WASM_TARGET)/release/testguest.wasm $(DIST)/testguest-packed.wasm
	cargo build --release --target $(WASM_TARGET) -p testguest --features tables
	cp target/$(WASM_TARGET)/release/testguest.wasm $(DIST)/testguest-tables.wasm
	cargo build --release --target $(WASM_TARGET) $(addprefix -p ,$(PLUGINS) $(FIXTURES))
	for p in $(PLUGINS) $(FIXTURES); do cp target/$(WASM_TARGET)/release/$$p.wasm $(DIST)/$$p.wasm; done

# The example plugins in Python (vip) and JavaScript (suspicious).
polyglot: $(DIST)/vip.wasm $(DIST)/suspicious.wasm

$(DIST)/vip.wasm: plugins/vip-py/app.py $(WIT)/plugin.wit
	mkdir -p $(DIST)
	cd plugins/vip-py && ../../$(COMPONENTIZE_PY) -d ../../$(WIT) -w transform componentize app -o ../../$@

$(DIST)/suspicious.wasm: plugins/suspicious-js/stage.js $(WIT_STATE)/plugin.wit $(WIT)/plugin.wit
	mkdir -p $(DIST)
	$(COMPONENTIZE_JS) plugins/suspicious-js/stage.js --wit $(WIT_STATE) --world-name transform --disable http fetch-event --out $@

demo: setup build
	bash scripts/demo.sh

test: setup build
	cargo fmt --all -- --check
	cargo clippy --release --workspace --all-targets -- -D warnings
	bash scripts/check-deploy.sh
	bash scripts/test.sh

fmt:
	cargo fmt --all

# The Docker engine scripts/container.sh may have started keeps its images
# under target/: stop it first.
clean:
	bash scripts/container.sh stop
	cargo clean
	rm -rf $(DIST)

# The host container image sluice:0.1.0, from this machine's build (the
# Dockerfile's `runtime-base` stage and deploy/local/sluice.Dockerfile).
# scripts/container.sh starts a Docker engine if none answers and makes the
# Debian base image from Debian's packages if no registry has it. With a
# registry, `docker build -t sluice:0.1.0 .` builds the image from source
# instead.
image: host plugins
	bash scripts/container.sh image
