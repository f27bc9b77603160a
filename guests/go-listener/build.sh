#!/usr/bin/env bash
# Builds target/guests/go-listener.wasm with the standard Go toolchain (GOOS=wasip1,
# //go:wasmexport, -buildmode=c-shared), bindings from wit-bindgen's Go generator (through the
# kubelisten-componentize helper, built from crates.io), then a component with the preview1
# reactor adapter. Needs Go >= 1.25 on PATH (the machine's Go; nothing is downloaded for Go).
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
root="$(cd "$here/../.." && pwd)"
build="$root/target/guests-build/go-listener"
out="$root/target/guests/go-listener.wasm"
helper="$root/guests/tools/componentize"

command -v go >/dev/null || { echo "go-listener: the Go toolchain (>= 1.25) is required" >&2; exit 1; }
componentize="$("$helper/ensure.sh")"

# The runtime package the generated bindings import (go.bytecodealliance.org/pkg v0.4.0) is not
# served by the Go module proxy; it ships inside the wit-bindgen-go crate the helper is built from.
pkg="$(cargo metadata --manifest-path "$helper/Cargo.toml" --format-version 1 --locked 2>/dev/null |
    python3 -c 'import json, os, sys
m = json.load(sys.stdin)
p = next(p for p in m["packages"] if p["name"] == "wit-bindgen-go")
print(os.path.join(os.path.dirname(p["manifest_path"]), "src", "pkg"))')"
[ -f "$pkg/go.mod" ] || { echo "go-listener: $pkg/go.mod not found" >&2; exit 1; }

rm -rf "$build" && mkdir -p "$build/src" "$(dirname "$out")"
"$componentize" bindgen go "$root/wit" listener "$build/src"
cp -r "$pkg" "$build/src/pkg"
chmod -R u+w "$build/src/pkg"
# Its go.mod asks for a newer Go than it needs; the packages used here build with Go 1.25.
sed -i 's/^go .*/go 1.25/' "$build/src/pkg/go.mod"
cp "$here/go.mod" "$build/src/go.mod"
cp -r "$here/export_wit_world" "$build/src/"

(cd "$build/src" && GOTOOLCHAIN=local GOFLAGS=-mod=mod GOOS=wasip1 GOARCH=wasm \
    go build -trimpath -buildmode=c-shared -ldflags='-s -w -checklinkname=0' -o "$build/core.wasm" .)
"$componentize" new "$build/core.wasm" "$out" --wit "$root/wit" listener
echo "go-listener: $out ($(stat -c %s "$out") bytes)" >&2
