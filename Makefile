# kubelisten: one entry point for building, testing and running. `make help` lists the targets.
SHELL := /bin/bash
GUEST_TARGET_DIR ?= $(CURDIR)/target/guests-build
GUESTS := rust-metrics rust-logger faulty noop json-parse superpod probe

.PHONY: help demo test test-unit guests host fmt clippy bench cluster-up cluster-down cluster-status

help: ## list the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | sed 's/:.*## /\t/' | column -t -s $$'\t'

guests: ## build every guest component into target/guests/NAME.wasm
	rustup target add wasm32-wasip2 >/dev/null
	cd guests && CARGO_TARGET_DIR=$(GUEST_TARGET_DIR) cargo build --release --target wasm32-wasip2
	mkdir -p target/guests
	for g in $(GUESTS); do cp $(GUEST_TARGET_DIR)/wasm32-wasip2/release/$${g//-/_}.wasm target/guests/$$g.wasm; done

host: ## build the kubelisten binary (release)
	cargo build --release -p kubelisten

demo: guests host ## run the demo
	./demo/run.sh

test: guests ## run every test (builds the guests, brings up the local control plane)
	deploy/local/with-cluster.sh cargo test --workspace --all-targets

fmt: ## check formatting
	cargo fmt --all -- --check
	cd guests && cargo fmt --all -- --check

clippy: ## lint the host and the guests
	cargo clippy --all-targets -- -D warnings
	cd guests && CARGO_TARGET_DIR=$(GUEST_TARGET_DIR) cargo clippy --release --target wasm32-wasip2 -- -D warnings

bench: guests ## run the dispatch benchmark
	cargo bench -p kubelisten --bench dispatch

cluster-up: ## start the local kube-apiserver + etcd
	deploy/local/cluster.sh up

cluster-down: ## stop the local control plane
	deploy/local/cluster.sh down

cluster-status: ## show the local control plane
	deploy/local/cluster.sh status
