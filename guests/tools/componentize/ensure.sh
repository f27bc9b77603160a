#!/usr/bin/env bash
# Builds (when missing or out of date) the kubelisten-componentize helper and prints its path.
# The build lives outside the repository, under ~/.cache/kubelisten/tools/componentize-target;
# a cold build takes about 1.5 minutes on two cores, an up-to-date check well under a second.
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
tools="${KUBELISTEN_TOOLS:-$HOME/.cache/kubelisten/tools}"
target="$tools/componentize-target"
CARGO_TARGET_DIR="$target" cargo build --quiet --release --locked \
    --manifest-path "$here/Cargo.toml" >&2
echo "$target/release/kubelisten-componentize"
