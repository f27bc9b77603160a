#!/usr/bin/env bash
# Builds target/guests/c-listener.wasm: wit-bindgen's C generator (through the
# kubelisten-componentize helper, built from crates.io), Debian's clang/lld/wasi-libc
# (wasm32-wasi preview1, reactor), then a component with the preview1 reactor adapter.
# Installs clang, lld, wasi-libc and the wasm32 compiler-rt builtins with apt-get when missing (needs root, as on our machines).
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
root="$(cd "$here/../.." && pwd)"
build="$root/target/guests-build/c-listener"
out="$root/target/guests/c-listener.wasm"

if ! command -v clang >/dev/null || ! command -v wasm-ld >/dev/null ||
    [ ! -f /usr/lib/wasm32-wasi/crt1-reactor.o ] ||
    ! compgen -G "/usr/lib/llvm-*/lib/clang/*/lib/wasi/libclang_rt.builtins-wasm32.a" >/dev/null; then
    echo "c-listener: installing clang, lld, wasi-libc, libclang-rt-dev-wasm32 (Debian packages)" >&2
    sudo=""; [ "$(id -u)" = 0 ] || sudo="sudo"
    $sudo apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq clang lld wasi-libc libclang-rt-dev-wasm32 >/dev/null
fi
componentize="$("$root/guests/tools/componentize/ensure.sh")"

rm -rf "$build" && mkdir -p "$build/bindings" "$(dirname "$out")"
"$componentize" bindgen c "$root/wit" listener "$build/bindings"
# -mexec-model=reactor: no main; exports are called after _initialize (wasi-libc's crt1-reactor).
clang --target=wasm32-wasi -mexec-model=reactor -Oz -flto -Wall -Wextra -Werror \
    -Wno-unused-parameter -I "$build/bindings" \
    "$here/listener.c" "$build/bindings/listener.c" "$build/bindings/listener_component_type.o" \
    -Wl,--strip-all -o "$build/core.wasm"
# The component-type section comes from listener_component_type.o; no separate embed step.
"$componentize" new "$build/core.wasm" "$out"
echo "c-listener: $out ($(stat -c %s "$out") bytes)" >&2
