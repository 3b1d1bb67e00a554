#!/bin/sh
# install_test.sh BUILD_DIR SOURCE_DIR PYTHON_INSTALL_DIR
# 1. `cmake --install` puts the module under the prefix, at the path Debian's
#    python3 searches for the default prefix (/usr/local), and it imports.
# 2. `pip install --no-build-isolation --no-index` in a venv made with
#    --system-site-packages builds it offline from Debian's packages alone.
set -eu
build=$1; src=$2; pydir=$3
python=/usr/bin/python3
tmp=$(mktemp -d); trap 'rm -rf "$tmp"' EXIT

check='
import sys, numpy as np, zcstore
assert zcstore.__file__.startswith(sys.argv[1]), zcstore.__file__
with zcstore.Store.create(capacity=16 << 20) as s:
    m = s.get(s.put({"W": np.arange(1000.0)}))
    assert m["W"][-1] == 999.0 and not m["W"].flags.writeable
with zcstore.Pool(1) as pool:  # its workers import this same installed module
    assert pool.submit(abs, -3).result(60) == 3
print("import ok:", zcstore.__file__, zcstore.__version__)
'

cmake --install "$build" --prefix "$tmp/prefix" >/dev/null
test -f "$tmp/prefix/$pydir/zcstore/__init__.py"
ls "$tmp/prefix/$pydir/zcstore/"_core*.so >/dev/null
# Where the default prefix installs it, Debian's python3 looks.
$python -c "import sys; assert '/usr/local/$pydir' in sys.path, sys.path"
(cd / && PYTHONPATH="$tmp/prefix/$pydir" $python -c "$check" "$tmp/prefix")

# pip, offline, from a copy of the source tree (pip builds in place).
mkdir "$tmp/src"
(cd "$src" && cp -r setup.py pyproject.toml README.md CMakeLists.txt cmake include store serializer pool python "$tmp/src/")
$python -m venv --system-site-packages "$tmp/venv"
"$tmp/venv/bin/pip" install --quiet --no-build-isolation --no-index "$tmp/src"
(cd / && "$tmp/venv/bin/python" -c "$check" "$tmp/venv")
echo "python install ok"
