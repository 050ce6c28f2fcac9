#!/usr/bin/env bash
# Fetch a Firecracker release (firecracker + jailer) and a guest kernel (uncompressed vmlinux)
# for this machine's architecture, for KVM hosts that will run the `firecracker` runtime.
# Needs internet access, curl and tar. Nothing is installed system-wide: everything goes into
# one directory, and the environment variables to set are printed at the end.
#
# Usage: scripts/fetch-firecracker.sh [DEST_DIR]
#   DEST_DIR             where to put the files (default: ./firecracker-bin)
#   FC_VERSION=v1.10.1   a release tag instead of the latest release
#   FC_KERNEL_URL=...    a guest kernel URL instead of Firecracker's CI kernel for the release
#   FC_RELEASES_URL=...  FC_CI_BUCKET=...   mirrors of GitHub releases and the CI kernel bucket
#
# Then: export the printed variables, and run `make test-kvm` or the node agent with
# ZEITWORK_RUNTIME=firecracker. Keep DEST_DIR on the same file system as the jailer's chroot
# base (/srv/jailer by default) so the kernel can be hard-linked into each jail.
set -euo pipefail

dest="${1:-./firecracker-bin}"
arch="$(uname -m)"
releases="${FC_RELEASES_URL:-https://github.com/firecracker-microvm/firecracker/releases}"
ci_bucket="${FC_CI_BUCKET:-https://s3.amazonaws.com/spec.ccfc.min}"

case "$arch" in
  x86_64 | aarch64) ;;
  *)
    echo "fetch-firecracker: unsupported architecture $arch (Firecracker supports x86_64 and aarch64)" >&2
    exit 2
    ;;
esac
for tool in curl tar sha256sum; do
  if ! command -v "$tool" >/dev/null 2>&1; then
    echo "fetch-firecracker: $tool is required" >&2
    exit 2
  fi
done

version="${FC_VERSION:-}"
if [ -z "$version" ]; then
  # The "latest" page redirects to the tag of the newest release.
  latest_url="$(curl -fsSLI -o /dev/null -w '%{url_effective}' "$releases/latest")"
  version="${latest_url##*/}"
fi
case "$version" in
  v[0-9]*) ;;
  *)
    echo "fetch-firecracker: could not determine a release tag (got '$version')" >&2
    exit 1
    ;;
esac

mkdir -p "$dest"
dest="$(cd "$dest" && pwd)"
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT

tarball="firecracker-$version-$arch.tgz"
echo "fetch-firecracker: downloading $tarball"
curl -fsSL -o "$work/$tarball" "$releases/download/$version/$tarball"
if curl -fsSL -o "$work/$tarball.sha256.txt" "$releases/download/$version/$tarball.sha256.txt"; then
  (cd "$work" && sha256sum -c "$tarball.sha256.txt")
else
  echo "fetch-firecracker: no published checksum for $tarball; not verified" >&2
fi
tar -xzf "$work/$tarball" -C "$work"
release_dir="$work/release-$version-$arch"
install -m 0755 "$release_dir/firecracker-$version-$arch" "$dest/firecracker"
install -m 0755 "$release_dir/jailer-$version-$arch" "$dest/jailer"

kernel_url="${FC_KERNEL_URL:-}"
if [ -z "$kernel_url" ]; then
  # Firecracker's CI publishes guest kernels per minor release: firecracker-ci/vX.Y/<arch>/.
  ci_version="${version%.*}"
  listing="$(curl -fsSL "$ci_bucket/?prefix=firecracker-ci/$ci_version/$arch/vmlinux-&list-type=2")"
  key="$(printf '%s\n' "$listing" | grep -oE "firecracker-ci/$ci_version/$arch/vmlinux-[0-9]+\.[0-9]+\.[0-9]+" | sort -V | tail -n 1 || true)"
  if [ -z "$key" ]; then
    echo "fetch-firecracker: no CI guest kernel found for $ci_version/$arch; set FC_KERNEL_URL" >&2
    exit 1
  fi
  kernel_url="$ci_bucket/$key"
fi
echo "fetch-firecracker: downloading guest kernel $kernel_url"
curl -fsSL -o "$dest/vmlinux" "$kernel_url"
chmod 0644 "$dest/vmlinux"

"$dest/firecracker" --version | head -n 1
echo
echo "Set these for the node agent (or make test-kvm):"
echo "export FIRECRACKER_BIN=$dest/firecracker"
echo "export JAILER_BIN=$dest/jailer"
echo "export FIRECRACKER_KERNEL=$dest/vmlinux"
