# kubelisten: one entry point for building, testing and running. `make help` lists the targets.
SHELL := /bin/bash
GUEST_TARGET_DIR ?= $(CURDIR)/target/guests-build
GUESTS := rust-metrics rust-logger faulty noop json-parse superpod probe bench-listener
# The listeners of issue 9, one per language (each installs its toolchain from the registries).
POLYGLOT_GUESTS := rust-listener python-listener js-listener c-listener go-listener

.PHONY: help bench-e2e reliability reliability-ci demo demo-replay test test-bench test-fuzz-inputs guests versioned-guests host fmt clippy bench cluster-up cluster-down cluster-status

help: ## list the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | sed 's/:.*## /\t/' | column -t -s $$'\t'

guests: ## build every guest component into target/guests/NAME.wasm
	rustup target add wasm32-wasip2 >/dev/null
	cd guests && CARGO_TARGET_DIR=$(GUEST_TARGET_DIR) cargo build --release --target wasm32-wasip2
	mkdir -p target/guests
	for g in $(GUESTS); do cp $(GUEST_TARGET_DIR)/wasm32-wasip2/release/$${g//-/_}.wasm target/guests/$$g.wasm; done

.PHONY: guests-polyglot
guests-polyglot: ## build the polyglot listeners (Rust, Python, JS, C, Go) into target/guests/
	guests/build-polyglot.sh $(POLYGLOT_GUESTS)

versioned-guests: ## build the hot-swap test guest in three versions (v1, v2 with state hand-over; v3 without)
	rustup target add wasm32-wasip2 >/dev/null
	mkdir -p target/guests
	for v in v1:handover v2:handover v3:; do \
	  name=$${v%%:*}; feat=$${v#*:}; \
	  (cd guests && KUBELISTEN_GUEST_VERSION=$$name CARGO_TARGET_DIR=$(GUEST_TARGET_DIR)/versioned-$$name \
	    cargo build --release --target wasm32-wasip2 -p versioned $${feat:+--features $$feat}) && \
	  cp $(GUEST_TARGET_DIR)/versioned-$$name/wasm32-wasip2/release/versioned.wasm target/guests/versioned-$$name.wasm || exit 1; \
	done

host: ## build the kubelisten binary (release)
	cargo build --release -p kubelisten

demo: guests host ## run the demo against the local control plane
	deploy/demo/run.sh

demo-replay: guests host ## the offline demo: replay recorded events, no cluster
	deploy/demo/replay.sh

test: test-bench test-fuzz-inputs guests guests-polyglot versioned-guests ## run every test (builds the guests, brings up the local control plane)
	deploy/local/with-cluster.sh cargo test --workspace --all-targets --no-fail-fast

test-bench: ## unit tests of the benchmark and reliability scripts' checks (Python standard library, no cluster)
	python3 -m unittest discover -s bench -p 'test_*.py'

test-fuzz-inputs: ## replay the fuzz targets' seeds and regression inputs on stable (host/fuzz/tests/regressions.rs)
	cd host/fuzz && CARGO_TARGET_DIR=../../target cargo test --no-default-features

fmt: ## check formatting
	cargo fmt --all -- --check
	cd host/fuzz && cargo fmt --all -- --check
	cd guests && cargo fmt --all -- --check

clippy: ## lint the host and the guests
	cargo clippy --all-targets -- -D warnings
	cd host/fuzz && CARGO_TARGET_DIR=../../target cargo clippy --no-default-features --all-targets -- -D warnings
	cd guests && CARGO_TARGET_DIR=$(GUEST_TARGET_DIR) cargo clippy --release --target wasm32-wasip2 -- -D warnings

bench: guests guests-polyglot ## run the dispatch benchmark (Rust guests and the five polyglot listeners)
	cargo bench -p kubelisten --bench dispatch
	cargo bench -p kubelisten --bench idle_dispatch

bench-e2e: ## end-to-end benchmark vs a native kube-runtime listener and kopf (own control plane)
	bench/e2e.sh

reliability: ## fault injection + bounded soak (own control plane)
	bench/reliability.sh

reliability-ci: ## short fault-injection run on the debug binary (needs `make guests`); fails on loss, duplicates, events out of sequence, missing versions, a dead host
	cargo build -p kubelisten
	# REL_UNSEEN_SLACK 2 s (1 s in the documented run): the debug binary on a busy CI machine can
	# be that far behind when its leader is killed, which is not a dropped delete.
	BENCH_SKIP_BUILD=1 REL_KL=target/debug/kubelisten REL_DURATION=10 REL_SOAK=60 REL_UNSEEN_SLACK=2 bench/reliability.sh

cluster-up: ## start the local kube-apiserver + etcd
	deploy/local/cluster.sh up

cluster-down: ## stop the local control plane
	deploy/local/cluster.sh down

cluster-status: ## show the local control plane
	deploy/local/cluster.sh status
