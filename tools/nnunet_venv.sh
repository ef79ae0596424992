#!/usr/bin/env bash
# Build (idempotently) the separate venv that runs the nnU-Net peer (tools/nnunet_peer.py).
#   bash tools/nnunet_venv.sh [VENV_DIR]        (default: .venv-nnunet in the repo root)
# torch==2.13.0 (the local CPU wheel) goes in first; nnunetv2 is then installed with a
# constraint file pinning torch, so pip can never replace it with a CUDA build.
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
root="$(dirname "$here")"
venv="${1:-${VENV_DIR:-$root/.venv-nnunet}}"
nnunet_version="${NNUNET_VERSION:-2.8.1}"
constraints="$here/nnunet-constraints.txt"
python="${PYTHON:-python3}"
t0=$(date +%s)
# pip warns once per package about local index folders that do not exist; hide only those lines
quiet_pip() { "$venv/bin/python" -m pip "$@" 2> >(grep -v "is ignored: it is neither a file nor a directory" >&2); }

if [ ! -x "$venv/bin/python" ]; then
    echo "[nnunet_venv] creating $venv with $($python --version 2>&1)"
    "$python" -m venv "$venv"
    quiet_pip install --quiet --upgrade pip
else
    echo "[nnunet_venv] $venv exists"
fi

have_torch=$("$venv/bin/python" -c 'import torch; print(torch.__version__)' 2>/dev/null || true)
if [[ "$have_torch" != 2.13.0* ]]; then
    echo "[nnunet_venv] installing torch==2.13.0 (found: ${have_torch:-none})"
    quiet_pip install --quiet "torch==2.13.0"
else
    echo "[nnunet_venv] torch $have_torch already installed"
fi

# every pin (nnunetv2 and the constraint file) that the venv does not satisfy yet
missing=$("$venv/bin/python" - "$constraints" "nnunetv2==$nnunet_version" <<'PY'
import importlib.metadata as m, sys
pins = [l.split("#")[0].strip() for l in open(sys.argv[1])] + [sys.argv[2]]
for pin in filter(None, pins):
    name, want = pin.split("==")
    try:
        have = m.version(name)
    except m.PackageNotFoundError:
        have = None
    if have is None or not (have == want or have.startswith(want + "+")):
        print(f"{name} {have or 'absent'} (want {want})")
PY
)
if [ -n "$missing" ]; then
    echo "[nnunet_venv] installing nnunetv2==$nnunet_version with -c $constraints; not yet satisfied:"
    echo "$missing" | sed 's/^/    /'
    quiet_pip install --quiet -c "$constraints" "nnunetv2==$nnunet_version"
else
    echo "[nnunet_venv] nnunetv2 $nnunet_version and all pins in $(basename "$constraints") already satisfied"
fi

"$venv/bin/python" - <<'PY'
import importlib.metadata as m
import torch
assert torch.__version__.startswith("2.13.0"), torch.__version__
assert not torch.version.cuda, f"CUDA torch slipped in: {torch.version.cuda}"
vers = {p: m.version(p) for p in ("nnunetv2", "batchgenerators", "blosc2", "numpy")}
print("[nnunet_venv] ok: torch", torch.__version__, " ".join(f"{k} {v}" for k, v in vers.items()))
PY
size=$(du -sh "$venv" | cut -f1)
echo "[nnunet_venv] done in $(( $(date +%s) - t0 )) s; $venv is $size"
