#!/usr/bin/env bash
# Builds the polyglot listeners (issue 9) into target/guests/NAME.wasm, installing each toolchain
# from the package registries when missing (tools are cached under ~/.cache/kubelisten/tools,
# or $KUBELISTEN_TOOLS):
#   rust-listener    cargo + wit-bindgen (crates.io), target wasm32-wasip2
#   python-listener  componentize-py (PyPI)
#   js-listener      ComponentizeJS (npm)
#   c-listener       clang/lld/wasi-libc (Debian) + wit-bindgen C generator (crates.io)
#   go-listener      the machine's Go (wasip1) + wit-bindgen Go generator (crates.io)
# Usage: guests/build-polyglot.sh [NAME...]   (default: all five)
set -euo pipefail
guests="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
root="$(cd "$guests/.." && pwd)"
all=(rust-listener python-listener js-listener c-listener go-listener)
[ $# -gt 0 ] || set -- "${all[@]}"

build_rust() {
    rustup target add wasm32-wasip2 >/dev/null 2>&1 || true
    (cd "$guests" && CARGO_TARGET_DIR="${GUEST_TARGET_DIR:-$root/target/guests-build}" \
        cargo build --quiet --release --target wasm32-wasip2 -p rust-listener)
    mkdir -p "$root/target/guests"
    cp "${GUEST_TARGET_DIR:-$root/target/guests-build}/wasm32-wasip2/release/rust_listener.wasm" \
        "$root/target/guests/rust-listener.wasm"
    echo "rust-listener: $root/target/guests/rust-listener.wasm" >&2
}

for name in "$@"; do
    start=$(date +%s%N)
    case "$name" in
        rust-listener) build_rust ;;
        python-listener | js-listener | c-listener | go-listener) "$guests/$name/build.sh" ;;
        *) echo "unknown guest $name (expected one of: ${all[*]})" >&2; exit 2 ;;
    esac
    ms=$(( ($(date +%s%N) - start) / 1000000 ))
    printf '%s: built in %d.%03d s\n' "$name" $((ms / 1000)) $((ms % 1000)) >&2
done
