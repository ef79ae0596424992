#!/usr/bin/env bash
# Download, into .whl/, the wheels tools/gpu_check.sh installs on a GPU machine without
# internet: our dependencies and everything they need, EXCEPT torch (and its own stack) and
# the packages the GPU image already holds (carrying those would shadow its compiled numpy/
# scipy stack). Versions are the ones in this checkout's .venv (what the tests ran with);
# wheels are for CPython 3.12 on manylinux x86-64. See tools/GPU.md.
#
#   bash tools/make_wheels.sh          # download into .whl/ (and git-exclude it)
#   bash tools/make_wheels.sh --list   # print NAME==VERSION lines, download nothing
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
VENV_PY=${VENV_PY:-.venv/bin/python}
[ -x "$VENV_PY" ] || { echo "make_wheels: $VENV_PY missing (make .venv first)" >&2; exit 2; }

# Already in the GPU image ('cuda'; /work/.library/device/KINDS.md, read 2026-11-17), torch's
# own requirements, and pure build tools: never carried.
IMAGE="absl-py attrs certifi charset-normalizer click cloudpickle contourpy cycler einops
filelock fonttools fsspec grpcio idna imageio jinja2 joblib kiwisolver lazy-loader markdown
markdown-it-py markupsafe matplotlib mdurl ml-dtypes mpmath msgpack networkx numpy packaging
pandas pillow pip protobuf psutil pygments pyparsing python-dateutil pyyaml requests rich
scikit-image scikit-learn scipy setuptools six sortedcontainers sympy tensorboard
tensorboard-data-server threadpoolctl tifffile toolz torch tqdm triton typing-extensions
urllib3 werkzeug wheel zipp"
# SimpleITK (53 MB) would push .whl/ past the device tool's 64 MiB carry limit; the GPU
# check reads and writes NIfTI only (nibabel), and pgps imports SimpleITK lazily for
# NRRD/MHA. WITH_SIMPLEITK=1 carries it anyway.
[ "${WITH_SIMPLEITK:-0}" = 1 ] || IMAGE="$IMAGE simpleitk"

pins=$("$VENV_PY" - "$IMAGE" <<'EOF'
import re, sys
from importlib import metadata
from packaging.markers import default_environment
from packaging.requirements import Requirement

skip = set(sys.argv[1].split())
env = {**default_environment(), "python_version": "3.12", "python_full_version": "3.12.3",
       "sys_platform": "linux", "platform_system": "Linux", "platform_machine": "x86_64",
       "implementation_name": "cpython"}
norm = lambda n: re.sub(r"[-_.]+", "-", n).lower()  # noqa: E731
todo = [Requirement(r) for r in metadata.requires("pgps")]
seen: dict[str, str] = {}
while todo:
    req = todo.pop()
    name = norm(req.name)
    if req.marker and not any(req.marker.evaluate({**env, "extra": e}) for e in [""] + sorted(req.extras)):
        continue
    if name in skip or name.startswith(("nvidia-", "cuda-")) or name in seen:
        continue
    try:
        dist = metadata.distribution(req.name)
    except metadata.PackageNotFoundError:
        sys.exit(f"make_wheels: {req.name} is not installed in the venv")
    seen[name] = dist.version
    for r in dist.requires or []:
        sub = Requirement(r)
        extras = set(req.extras)
        if sub.marker and not any(sub.marker.evaluate({**env, "extra": e}) for e in [""] + sorted(extras)):
            continue
        todo.append(sub)
for name, version in sorted(seen.items()):
    print(f"{name}=={version}")
EOF
)

if [ "${1:-}" = "--list" ]; then echo "$pins"; exit 0; fi

mkdir -p .whl
grep -qxF "/.whl/" .git/info/exclude 2>/dev/null || echo "/.whl/" >> .git/info/exclude
plat=(--platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64
      --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64
      --platform manylinux1_x86_64)
for pin in $pins; do
  ls .whl/"$(echo "${pin%%==*}" | tr - _)"-"${pin##*==}"-*.whl >/dev/null 2>&1 && continue
  python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 \
    --implementation cp "${plat[@]}" -d .whl "$pin" \
  || python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 \
    --implementation cp "${plat[@]}" --platform manylinux_2_24_x86_64 \
    --platform manylinux_2_31_x86_64 --platform manylinux_2_34_x86_64 -d .whl "$pin"
done
echo "make_wheels: $(find .whl -name '*.whl' | wc -l) wheels, $(du -sh .whl | cut -f1) in .whl/"
