#!/usr/bin/env bash
# Build mmcv's wheel, with its C++ ops, against the torch that PYTHON has.
#
#   tools/misc/build_mmcv_wheel.sh PYTHON MMCV_VERSION OUT_DIR
#
# mmcv has no wheel on PyPI, and its setup.py asks for -std=c++17, which
# torch >= 2.14's headers refuse ("C++20 or later compatible compiler is
# required to use ATen"). The sdist is fetched, its -std flags are raised to
# c++20, and the wheel is built into OUT_DIR.part, then renamed to OUT_DIR:
# an interrupted build never leaves a wheel behind that looks complete.
set -euo pipefail
PYTHON=$1 VERSION=$2 OUT=$3
WORK=$(mktemp -d)
trap 'rm -rf "$WORK"' EXIT
"$PYTHON" -m pip download --no-deps --no-binary :all: --no-build-isolation \
    --no-cache-dir -d "$WORK" "mmcv==$VERSION"
tar -xzf "$WORK/mmcv-$VERSION.tar.gz" -C "$WORK"
sed -i "s/'-std=c++1[47]'/'-std=c++20'/g" "$WORK/mmcv-$VERSION/setup.py"
rm -rf "$OUT.part"
MMCV_WITH_OPS=1 MAX_JOBS=${MAX_JOBS:-2} "$PYTHON" -m pip wheel \
    --no-build-isolation --no-deps --no-cache-dir -w "$OUT.part" \
    "$WORK/mmcv-$VERSION"
rm -rf "$OUT"
mv "$OUT.part" "$OUT"
