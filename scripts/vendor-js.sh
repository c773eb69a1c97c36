#!/bin/sh
# vendor-js.sh re-vendors the two codec libraries of mote.js as browser ES
# modules: cbor-x (CBOR) and @msgpack/msgpack (MessagePack), from the npm
# registry, each bundled into one file by esbuild (their code unchanged; the
# npm packages ship several module files, not one browser bundle), into
# clients/js/cbor-x.esm.js and clients/js/msgpack.esm.js, with their licences.
# Needs npm (for `npm pack`) and Go (esbuild runs with `go run`).
#
# To update: change the versions below, run `scripts/vendor-js.sh` from the
# repository root, record the printed sha256 sums in clients/js/README.md,
# and run `go test ./clients/js/ ./web/`.
set -eu
CBORX=1.6.9
MSGPACK=3.1.3
ESBUILD=v0.28.2

root=$(pwd)
out="$root/clients/js"
test -f "$out/mote.js" || { echo "vendor-js.sh: run it from the repository root" >&2; exit 2; }
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
cd "$tmp"
npm pack --silent "cbor-x@$CBORX" "@msgpack/msgpack@$MSGPACK" >/dev/null
sha256sum "cbor-x-$CBORX.tgz" "msgpack-msgpack-$MSGPACK.tgz"
mkdir -p node_modules/cbor-x node_modules/@msgpack/msgpack
tar xzf "cbor-x-$CBORX.tgz" -C node_modules/cbor-x --strip-components=1
tar xzf "msgpack-msgpack-$MSGPACK.tgz" -C node_modules/@msgpack/msgpack --strip-components=1
# What mote.js's codecs.js uses of each.
echo "export { Decoder, setSizeLimits } from 'cbor-x/decode'
export { Encoder } from 'cbor-x/encode'" >cbor.js
echo "export { Decoder, Encoder, DecodeError } from '@msgpack/msgpack'" >msgpack.js
build() { # entry, output, banner
  (cd "$root" && go run "github.com/evanw/esbuild/cmd/esbuild@$ESBUILD" "$tmp/$1" --bundle --format=esm \
    --platform=browser --target=es2020 --legal-comments=inline --log-level=warning \
    "--banner:js=$3" "--outfile=$2")
}
build cbor.js "$out/cbor-x.esm.js" "// cbor-x $CBORX (MIT, CBORX-LICENSE.md): decode.js and encode.js of the npm package, bundled by esbuild $ESBUILD (scripts/vendor-js.sh)."
build msgpack.js "$out/msgpack.esm.js" "// @msgpack/msgpack $MSGPACK (ISC, MSGPACK-LICENSE.md): dist.esm of the npm package, bundled by esbuild $ESBUILD (scripts/vendor-js.sh)."
cp node_modules/cbor-x/LICENSE "$out/CBORX-LICENSE.md"
cp node_modules/@msgpack/msgpack/LICENSE "$out/MSGPACK-LICENSE.md"
sha256sum "$out/cbor-x.esm.js" "$out/msgpack.esm.js"
