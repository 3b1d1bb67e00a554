#!/bin/sh
# install_test BUILD_DIR SOURCE_DIR: installs BUILD_DIR into a temporary prefix,
# then builds a consumer with find_package and with pkg-config, and runs both.
set -eu
build=$1; src=$2
tmp=$(mktemp -d); trap 'rm -rf "$tmp"' EXIT
cmake --install "$build" --prefix "$tmp/prefix" >/dev/null
cmake -S "$src" -B "$tmp/b" -DCMAKE_PREFIX_PATH="$tmp/prefix" >/dev/null
cmake --build "$tmp/b" >/dev/null
"$tmp/b/consumer"
"$tmp/b/consumer_shared"  # the installed libzcstore.so.N (CMake sets the run path)
PKG_CONFIG_PATH=$(dirname "$(find "$tmp/prefix" -name zcstore.pc)")
export PKG_CONFIG_PATH
# No --define-variable: the .pc file must follow the prefix on its own. Given
# -lzcstore the linker takes the shared library, found at run time through the
# rpath the .pc file brings (no LD_LIBRARY_PATH); the static archive is linked
# by naming it.
unset LD_LIBRARY_PATH
c++ -std=c++20 "$src/consumer.cc" -o "$tmp/pc" $(pkg-config --cflags --libs zcstore)
"$tmp/pc"
c++ -std=c++20 "$src/consumer.cc" -o "$tmp/pc_static" $(pkg-config --cflags zcstore) \
  "$(pkg-config --variable=libdir zcstore)/libzcstore.a" $(pkg-config --libs-only-other --static zcstore) -pthread
"$tmp/pc_static"
# The C ABI, from C, through its own .pc file.
cc -std=c11 -Wall -Werror "$src/consumer_c.c" -o "$tmp/c" $(pkg-config --cflags --libs zcstore_c)
"$tmp/c"
test -x "$tmp/prefix/bin/zcstore"
echo "install ok"
