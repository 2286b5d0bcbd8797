#!/usr/bin/env bash
# Builds the static musl batond and batonctl (release) and the image localhost/baton:dev
# from cluster/Containerfile, without a registry or a daemon (buildah, chroot isolation).
#
#   cluster/build-image.sh                  build the binaries, then the image
#   cluster/build-image.sh --binaries-only  only the binaries (no buildah here)
#   IMAGE=localhost/baton:x cluster/build-image.sh
#
# Environment:
#   CARGO_TARGET_DIR  where cargo builds (default: target/musl under the repository, so the
#                     build does not wait on the lock of a cargo that runs this script)
#   BIN_DIR           take batond and batonctl from here and build nothing
#   IMAGE             the tag (default localhost/baton:dev)
#   BATON_CARGO_LOCK  a file to hold with flock(1) around cargo (shared build machines)
#
# Prints the image's size and the build times; the last line is the image name. Needs
# Debian's musl-tools (musl-gcc: aws-lc-sys compiles C for the target) and buildah.
set -euo pipefail

top=$(cd "$(dirname "$0")/.." && pwd)
target=x86_64-unknown-linux-musl
image=${IMAGE:-localhost/baton:dev}
binaries_only=false
case "${1:-}" in
  --binaries-only) binaries_only=true ;;
  "") ;;
  *) echo "usage: $0 [--binaries-only]" >&2; exit 2 ;;
esac

die() { echo "build-image.sh: $*" >&2; exit 1; }
now() { date +%s%N; }
since() { local ms=$((($(now) - $1) / 1000000)); printf '%d.%d' $((ms / 1000)) $((ms % 1000 / 100)); }

if [ -z "${BIN_DIR:-}" ]; then
  command -v musl-gcc >/dev/null || die "musl-gcc not found: apt-get install musl-tools"
  rustup target list --installed 2>/dev/null | grep -qx "$target" ||
    die "the Rust target $target is missing: rustup target add $target"
  export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$top/target/musl}
  # aws-lc-sys and ring build C with $CC_<target>; the host gcc would link glibc headers.
  export CC_x86_64_unknown_linux_musl=${CC_x86_64_unknown_linux_musl:-musl-gcc}
  cargo=(cargo build --release --locked --target "$target" -p batond -p batonctl)
  [ -n "${BATON_CARGO_LOCK:-}" ] && cargo=(flock "$BATON_CARGO_LOCK" "${cargo[@]}")
  start=$(now)
  (cd "$top" && "${cargo[@]}")
  echo "build-image.sh: musl release build $(since "$start") s"
  BIN_DIR=$CARGO_TARGET_DIR/$target/release
fi

for b in batond batonctl; do
  [ -x "$BIN_DIR/$b" ] || die "$BIN_DIR/$b is missing"
  # A dynamic binary would fail in the empty image with a bare "no such file".
  if command -v file >/dev/null && file -L "$BIN_DIR/$b" | grep -q 'dynamically linked'; then
    die "$BIN_DIR/$b is dynamically linked; build it for $target"
  fi
done

if $binaries_only; then
  echo "build-image.sh: binaries in $BIN_DIR (no image built)"
  exit 0
fi

# A small build context of its own: the Containerfile's two files and the binaries (the
# repository with its target directories would be scanned whole).
ctx=$(mktemp -d /var/tmp/baton-image.XXXXXX)
trap 'rm -rf "$ctx"' EXIT
mkdir -p "$ctx/cluster/image" "$ctx/bin"
cp "$top/cluster/Containerfile" "$ctx/cluster/"
cp "$top/cluster/image/passwd" "$top/cluster/image/group" "$ctx/cluster/image/"
cp "$BIN_DIR/batond" "$BIN_DIR/batonctl" "$ctx/bin/"
# The release profile keeps symbols (backtraces on the developer's machine); the image
# does without them (30 → 24 MB for batond).
if command -v strip >/dev/null; then strip "$ctx/bin/batond" "$ctx/bin/batonctl"; fi

version=$(sed -n 's/^version = "\(.*\)"/\1/p' "$top/Cargo.toml" | head -1)
revision=$(git -C "$top" rev-parse HEAD 2>/dev/null || echo unknown)
start=$(now)
buildah bud --isolation chroot --layers=false --quiet \
  -f "$ctx/cluster/Containerfile" \
  --build-arg BIN_DIR=bin --build-arg VERSION="$version" --build-arg REVISION="$revision" \
  -t "$image" "$ctx" >/dev/null
echo "build-image.sh: image build $(since "$start") s"

# The data dir must belong to 10001 (a volume mounted there copies its owner).
c=$(buildah from --pull-never "$image")
trap 'buildah rm "$c" >/dev/null 2>&1 || true; rm -rf "$ctx"' EXIT
m=$(buildah mount "$c")
owner=$(stat -c %u:%g "$m/var/lib/baton")
buildah umount "$c" >/dev/null
[ "$owner" = 10001:10001 ] || die "/var/lib/baton in the image belongs to $owner, not 10001:10001"

size=$(podman image inspect --format '{{.Size}}' "$image" 2>/dev/null || echo 0)
echo "build-image.sh: $image $(numfmt --to=iec --suffix=B "$size") ($size bytes)"
echo "$image"
