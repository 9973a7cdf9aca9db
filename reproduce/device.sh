#!/usr/bin/env bash
# On a GPU machine: train pending Table 1 rows at the full budget within --minutes (reproduce/DEVICE.md).
#   bash reproduce/device.sh --minutes 9 --out "$OUT" [--group R] [--concurrent N] [--compile] [--tiny]
# The clock starts here, before the project is installed: --minutes bounds the whole command.
set -euo pipefail
export SEGNET_DEVICE_START="${SEGNET_DEVICE_START:-$(date +%s.%N)}"
export PYTHONUNBUFFERED=1
cd "$(dirname "$0")/.."
python=${PYTHON:-python3}
if ! "$python" -c "import caffe_proto, segnet" 2>/dev/null; then
    # the device machine has the dependencies but no network: install the project alone
    "$python" -m pip install --quiet --no-deps --no-build-isolation --no-index .
fi
exec "$python" reproduce/device.py run "$@"
