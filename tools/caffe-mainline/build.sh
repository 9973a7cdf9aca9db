#!/usr/bin/env bash
# Build mainline BVLC Caffe (github.com/BVLC/caffe, master at 9b891540) CPU-only,
# with OpenBLAS and pycaffe for the system /usr/bin/python3, on Debian 12, as root.
# It is the second reference (beside caffe-segnet) that the mainline-Caffe test
# vectors in tests/data/oracle_mainline/ were recorded from. Nothing in the
# project, its tests or CI needs it.
#
#   CAFFE_GIT=<clone URL or local git mirror of BVLC/caffe> bash tools/caffe-mainline/build.sh
#
# Knobs: CAFFE_DIR (default /tmp/caffe-mainline), JOBS (default 2), SKIP_APT=1.
# Afterwards: PYTHONPATH=$CAFFE_DIR/python /usr/bin/python3 -c 'import caffe'
#
# Changes to the source, all build-only (no layer arithmetic):
#  - protobuf >= 3.20 has only the one-argument CodedInputStream::SetTotalBytesLimit;
#  - OpenCV, LevelDB and LMDB are switched off (no data layer is needed to record vectors).
set -euo pipefail

CAFFE_DIR=${CAFFE_DIR:-/tmp/caffe-mainline}
COMMIT=9b891540183ddc834a02b2bd81b31afae71b2153
JOBS=${JOBS:-2}
PY=/usr/bin/python3
if [ -z "${CAFFE_GIT:-}" ] && [ ! -d "$CAFFE_DIR/.git" ]; then
  echo "set CAFFE_GIT to a clone URL or a local git mirror of github.com/BVLC/caffe" >&2; exit 2
fi
T0=$SECONDS
log() { printf '[caffe-mainline %4ds] %s\n' $((SECONDS - T0)) "$*"; }

if [ "${SKIP_APT:-0}" != 1 ]; then
  log "apt-get install"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update
  apt-get install -y --no-install-recommends \
    git ca-certificates build-essential pkg-config \
    libprotobuf-dev protobuf-compiler libgoogle-glog-dev libgflags-dev \
    libhdf5-dev libboost-system-dev libboost-filesystem-dev libboost-thread-dev \
    libboost-python-dev libopenblas-dev \
    python3-dev python3-numpy python3-protobuf python3-six python3-skimage python3-scipy
fi

if [ ! -d "$CAFFE_DIR/.git" ]; then
  log "git clone $CAFFE_GIT -> $CAFFE_DIR"
  git clone -q "$CAFFE_GIT" "$CAFFE_DIR"
fi
cd "$CAFFE_DIR"
git -c advice.detachedHead=false checkout -q -f "$COMMIT"
sed -i 's/SetTotalBytesLimit(kProtoReadBytesLimit, 536870912)/SetTotalBytesLimit(kProtoReadBytesLimit)/' \
  src/caffe/util/io.cpp
log "checked out $(git rev-parse --short=8 HEAD)"

PYVER=$($PY -c 'import sys; print("%d.%d" % sys.version_info[:2])')
NPINC=$($PY -c 'import numpy; print(numpy.get_include())')
MA=$(gcc -print-multiarch)
cat > Makefile.config <<CFG
CPU_ONLY := 1
USE_OPENCV := 0
USE_LEVELDB := 0
USE_LMDB := 0
BLAS := open
BLAS_INCLUDE := /usr/include/$MA/openblas-pthread
BLAS_LIB := /usr/lib/$MA/openblas-pthread
PYTHON_INCLUDE := /usr/include/python$PYVER $NPINC
PYTHON_LIB := /usr/lib/$MA
PYTHON_LIBRARIES := boost_python${PYVER/./} python$PYVER
INCLUDE_DIRS := \$(PYTHON_INCLUDE) /usr/local/include /usr/include/hdf5/serial
LIBRARY_DIRS := \$(PYTHON_LIB) /usr/local/lib /usr/lib /usr/lib/$MA/hdf5/serial
BUILD_DIR := build
DISTRIBUTE_DIR := distribute
Q ?= @
CFG

log "make -j$JOBS all pycaffe"
make -j"$JOBS" all pycaffe
PYTHONPATH="$CAFFE_DIR/python" GLOG_minloglevel=2 $PY -c \
  'import caffe; caffe.set_mode_cpu(); print("import caffe ok:", caffe.__file__)'
log "mainline Caffe $(git rev-parse --short=8 HEAD) ready in $CAFFE_DIR"
