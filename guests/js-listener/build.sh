#!/usr/bin/env bash
# Builds target/guests/js-listener.wasm with ComponentizeJS (from npm), run through npx.
# Installs @bytecodealliance/componentize-js under ~/.cache/kubelisten/tools/node when missing.
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
root="$(cd "$here/../.." && pwd)"
tools="${KUBELISTEN_TOOLS:-$HOME/.cache/kubelisten/tools}"
version="0.23.0"
# ComponentizeJS imports @bytecodealliance/preview2-shim without declaring it (it used to come
# along with jco); install it explicitly.
shim_version="0.25.0"
node_dir="$tools/node"
out="$root/target/guests/js-listener.wasm"

pkg_version() { # the installed version of npm package $1 under $node_dir, or nothing
    node -e 'try { console.log(JSON.parse(require("fs").readFileSync(process.argv[1])).version) } catch (_) {}' \
        "$node_dir/node_modules/$1/package.json"
}
if [ "$(pkg_version @bytecodealliance/componentize-js)" != "$version" ] ||
    [ "$(pkg_version @bytecodealliance/preview2-shim)" != "$shim_version" ]; then
    echo "js-listener: installing @bytecodealliance/componentize-js $version into $node_dir" >&2
    mkdir -p "$node_dir"
    (cd "$node_dir" && { [ -f package.json ] || npm init -y >/dev/null; } &&
        npm install --no-audit --no-fund --silent --save-exact \
            "@bytecodealliance/componentize-js@$version" "@bytecodealliance/preview2-shim@$shim_version")
fi

mkdir -p "$(dirname "$out")"
# -d http fetch-event: no wasi:http imports (the host does not provide wasi:http).
# Run from the repository root with relative paths: the splicer's file access is relative to it.
cd "$root"
"$node_dir/node_modules/.bin/componentize-js" guests/js-listener/listener.js \
    --wit wit --world-name listener -d http fetch-event -o target/guests/js-listener.wasm
echo "js-listener: $out ($(stat -c %s "$out") bytes)" >&2
