"""Build the tiny ReCamMaster- and Memory-V2V-layout checkpoints the NVS tests need; prints one JSON line of paths.

Run inside ComfyUI's Python with cwd = the ComfyUI folder: ``python build_checkpoints.py --out DIR``.
Plain files have ReCamMaster's own init (zero cam_encoder, identity projector); ``*_cam`` files have random camera
weights so the camera path changes the output.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from _nvs import bootstrap, use_repo

CAMERA_STD = 0.05


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--out", required=True)
    args = parser.parse_args()
    bootstrap()
    use_repo()
    from memv2v_cli.demo import checkpoints as demo_checkpoints

    out = Path(args.out)
    paths = {f"{name}_{kind}": path for name, built in (
        ("recammaster", demo_checkpoints.build_recammaster(out)),
        ("memoryv2v", demo_checkpoints.build_memoryv2v(out)),
        ("recammaster_cam", demo_checkpoints.build_recammaster(out, camera_std=CAMERA_STD)),
    ) for kind, path in built.items()}
    print(json.dumps(paths))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
