#!/usr/bin/env bash
# tools/dfs.sh COMMAND [ARGS...]: install whatever is missing, then run dfs.
#
#   tools/dfs.sh up            local ZooKeeper + 3 storage nodes + mount at ./mnt
#   tools/dfs.sh test [ARGS]   the whole test suite (pytest ARGS)
#   tools/dfs.sh down | status | fsck | ...   any other 'dfs' subcommand
#
# Idempotent and quick when everything is installed: Debian packages (zookeeper,
# fuse3, libfuse3-dev, pkg-config, patch, a compiler and Python headers to build
# pyfuse3; rsync, acl and iproute2 for the tests; with sudo when not root), a
# virtual environment in .venv, pyfuse3 built there from its PyPI sdist with our
# patch (tools/pyfuse3/README.md), the project in it (editable); all reinstalled
# when pyproject.toml or the patch change.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}

missing=()
[[ -e /usr/share/java/zookeeper.jar ]] || missing+=(zookeeper)
command -v java >/dev/null || missing+=(default-jre-headless)
command -v fusermount3 >/dev/null || missing+=(fuse3)
pkg-config --exists fuse3 2>/dev/null || missing+=(libfuse3-dev pkg-config)
command -v gcc >/dev/null || missing+=(gcc)
command -v patch >/dev/null || missing+=(patch)
command -v rsync >/dev/null || missing+=(rsync)  # the test suite copies trees with it
command -v setfacl >/dev/null || missing+=(acl)  # tests/test_acl.py runs setfacl and getfacl
command -v ip >/dev/null || missing+=(iproute2)  # tests/test_partitions.py: ip netns, veth pairs
"$PY" -c 'import sysconfig, os, sys; sys.exit(not os.path.exists(sysconfig.get_paths()["include"] + "/Python.h"))' \
    2>/dev/null || missing+=(python3-dev)
"$PY" -c 'import venv, ensurepip' 2>/dev/null || missing+=(python3-venv)
if ((${#missing[@]})); then
    sudo=""
    [[ $(id -u) -eq 0 ]] || sudo=sudo
    echo "dfs: installing Debian packages: ${missing[*]}" >&2
    $sudo apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq "${missing[@]}" >&2
fi

if [[ ! -x .venv/bin/python ]]; then
    echo "dfs: creating .venv" >&2
    "$PY" -m venv .venv
fi
stamp=.venv/.dfs-installed
want=$(cat pyproject.toml tools/pyfuse3/handlers.patch | sha256sum | cut -d' ' -f1)
if [[ ! -f $stamp || $(cat "$stamp") != "$want" ]] ||
        ! .venv/bin/python -c 'import pyfuse3, trio, kazoo, xxhash, pytest, dfs; pyfuse3.Operations.lseek' 2>/dev/null; then
    echo "dfs: installing the project into .venv" >&2
    .venv/bin/python -m pip install -q --upgrade pip >&2
    # pyfuse3 at the version pyproject.toml pins, from its sdist with our handlers
    # added; the build runs Cython on the patched sources (the sdist's .c is stale).
    version=$(sed -n 's/^ *"pyfuse3==\([^"]*\)".*/\1/p' pyproject.toml)
    [[ -n $version ]] || { echo "dfs: pyproject.toml must pin pyfuse3==VERSION (see tools/pyfuse3/README.md)" >&2; exit 1; }
    src=$(mktemp -d)
    trap 'rm -rf "$src"' EXIT
    .venv/bin/python -m pip download -q --no-deps --no-binary pyfuse3 -d "$src" "pyfuse3==$version" >&2
    tar -xzf "$src/pyfuse3-$version.tar.gz" -C "$src"
    patch -s -p1 -d "$src/pyfuse3-$version" <tools/pyfuse3/handlers.patch ||
        { echo "dfs: tools/pyfuse3/handlers.patch does not apply to pyfuse3 $version (see its README)" >&2; exit 1; }
    SETUPTOOLS_SCM_PRETEND_VERSION="$version+dfs" \
        .venv/bin/python -m pip install -q --force-reinstall --no-deps "$src/pyfuse3-$version" >&2
    rm -rf "$src"
    trap - EXIT
    .venv/bin/python -m pip install -q -e '.[test]' >&2
    echo "$want" >"$stamp"
fi

cmd=${1:-}
[[ -n $cmd ]] || { echo "usage: tools/dfs.sh up|down|test|COMMAND [ARGS...]" >&2; exit 2; }
shift
case $cmd in
    test)
        # pytest exits 5 when it collected no test: that is a failure here too.
        # Two pytest-xdist workers by default (the tests mostly wait on ZooKeeper, nodes and
        # the kernel, so two run in about half the time on 2 cores); "-n 0" after it runs serially.
        exec .venv/bin/python -m pytest -n "${DFS_TEST_WORKERS:-2}" --dist worksteal "$@" ;;
    *)
        exec .venv/bin/dfs "$cmd" "$@" ;;
esac
