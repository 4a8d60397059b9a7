#!/usr/bin/env bash
# Builds the acestream-agent image from this checkout: a static release binary
# (glibc, -C target-feature=+crt-static) in an image FROM scratch, tagged
# acestream-agent:<version> and acestream-agent:latest.
#
#   packaging/docker/build.sh            # → acestream-agent:0.1.0, acestream-agent:latest
#   IMAGE=registry.example/acestream-agent packaging/docker/build.sh
#
# Needs cargo and Docker; pulls nothing.
set -euo pipefail
cd "$(dirname "$0")/../.."

image=${IMAGE:-acestream-agent}
version=$(sed -n 's/^version = "\(.*\)"$/\1/p' Cargo.toml | head -n1)
revision=$(git rev-parse --short HEAD 2>/dev/null || echo unknown)
case "$(uname -m)" in
  x86_64) target=x86_64-unknown-linux-gnu ;;
  aarch64) target=aarch64-unknown-linux-gnu ;;
  *) echo "build.sh: no static target known for $(uname -m)" >&2; exit 1 ;;
esac

# A target directory of its own: the static flags would otherwise rebuild the normal one.
target_dir=${CARGO_TARGET_DIR:-target}/image
RUSTFLAGS="-C target-feature=+crt-static" \
  cargo build --release --locked --target "$target" --target-dir "$target_dir"
binary="$target_dir/$target/release/acestream-agent"

context=$(mktemp -d)
trap 'rm -rf "$context"' EXIT
cp packaging/docker/Dockerfile "$context/"
cp "$binary" "$context/acestream-agent"
strip "$context/acestream-agent" 2>/dev/null || true

docker build --quiet \
  --build-arg "VERSION=$version" --build-arg "REVISION=$revision" \
  -t "$image:$version" -t "$image:latest" "$context" >/dev/null
size=$(docker image inspect -f '{{.Size}}' "$image:$version")
echo "$image:$version ($((size / 1024 / 1024)) MiB, also tagged $image:latest)"
