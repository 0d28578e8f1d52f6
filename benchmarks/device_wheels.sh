#!/usr/bin/env bash
# Fills .whl/ (git-ignored) with every Python 3.12 wheel the lent GPU machine's image lacks for
# benchmarks/gpu.sh: grain, ml_collections, OpenEXR (../shared/device/wheels.sh's defaults), tensorboardX
# (the trainer's event files) and tensorflow-datasets with its dependencies (the prepared ArrayRecord
# pipeline; pyarrow is imported lazily and not needed; importlib_resources, which the 2026-11-26 H100
# run lacked). promise ships only as a source archive, so its
# (pure-Python) wheel is built here. Run from the repository root, then name .whl in the device call's carry.
set -euo pipefail
root=$(git rev-parse --show-toplevel)
cd "$root"
PY=${PYTHON:-python3}
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
"$PY" -m pip wheel -q --no-deps promise==2.3 -w "$tmp"
bash ../shared/device/wheels.sh tensorboardX==2.6.5 tensorflow-datasets==4.9.10 dm-tree==0.1.10 \
  immutabledict==4.3.1 simple_parsing==0.1.9 docstring-parser==0.18.0 tensorflow-metadata==1.21.0 \
  googleapis-common-protos==1.76.0 termcolor==3.3.0 toml==0.10.2 wrapt==2.5.2 psutil==7.2.2 \
  importlib_resources==7.1.0 zipp==4.1.2
cp "$tmp"/promise-*.whl .whl/
du -sh .whl
