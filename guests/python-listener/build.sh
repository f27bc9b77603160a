#!/usr/bin/env bash
# Builds target/guests/python-listener.wasm with componentize-py (from PyPI).
# Installs componentize-py into a venv under ~/.cache/kubelisten/tools/py when missing.
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
root="$(cd "$here/../.." && pwd)"
tools="${KUBELISTEN_TOOLS:-$HOME/.cache/kubelisten/tools}"
version="0.25.1"
venv="$tools/py"
out="$root/target/guests/python-listener.wasm"

if ! "$venv/bin/componentize-py" --version 2>/dev/null | grep -q "$version"; then
    echo "python-listener: installing componentize-py $version into $venv" >&2
    python3 -m venv "$venv"
    "$venv/bin/pip" install --quiet "componentize-py==$version"
fi

mkdir -p "$(dirname "$out")"
cd "$here"
"$venv/bin/componentize-py" -d "$root/wit" -w listener componentize app -p "$here" -o "$out"
echo "python-listener: $out ($(stat -c %s "$out") bytes)" >&2
