#!/usr/bin/env python3
"""Pull + unpack of a multi-layer image: thingdoer against skopeo copy + umoci unpack.

Starts Debian's docker-registry on a free loopback port, pushes an image built here (busybox
plus LAYERS layers of MiB pseudo-random files each, gzipped) with skopeo, then alternates, N
rounds, each into a fresh empty dir:

- thingdoer: ``oci.registry.pull`` with ``layers_dir`` (download, verify, unpack every layer);
- peer:      ``skopeo copy docker://… oci:DIR:tag`` then ``umoci unpack --image DIR:tag``.

Prints JSON: median and p90 seconds of each and the median ratio thingdoer/peer. Needs
docker-registry, skopeo, umoci (Debian packages) and root (umoci keeps owners as root).
Usage: bench/image_pull.py [-n 7] [--layers 5] [--mib 4]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from tests.registry_helpers import start_registry, tar_of  # noqa: E402
from thingdoer.oci.busybox import DEFAULT_PATH, busybox_layer, goarch, write_image  # noqa: E402
from thingdoer.oci.image import ImageStore  # noqa: E402
from thingdoer.oci.registry import Settings, pull  # noqa: E402


def build(layout: Path, layers: int, mib: int) -> None:
    """busybox + ``layers`` layers, each a few files of half-random bytes (gzip gets ~2×)."""
    rng = os.urandom
    tars = [busybox_layer()]
    for i in range(layers):
        files = []
        for j in range(4):
            chunk = b"".join(rng(512) + bytes(512) for _ in range(mib * 256))
            files.append((f"layer{i}/f{j}", chunk, ""))
        tars.append(tar_of((f"layer{i}", None, ""), *files))
    write_image(layout, "bench:v1", tars,
                {"architecture": goarch(), "os": "linux", "config": {"Env": [DEFAULT_PATH]}})


def percentile(values: list[float], p: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(p * (len(ordered) - 1))))]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("-n", type=int, default=7)
    parser.add_argument("--layers", type=int, default=5)
    parser.add_argument("--mib", type=int, default=4, help="MiB per layer (uncompressed)")
    args = parser.parse_args()
    for tool in ("docker-registry", "skopeo", "umoci"):
        if not shutil.which(tool):
            print(json.dumps({"error": f"{tool} is not installed"}))
            return 1
    work = Path(tempfile.mkdtemp(prefix="thingdoer-bench-pull-"))
    registry = start_registry(work / "registry")
    try:
        build(work / "src", args.layers, args.mib)
        registry.push(work / "src", "bench:v1", "bench/image:v1")
        ref = f"{registry.host}/bench/image:v1"
        settings = Settings(frozenset([registry.host]))
        ours, peer = [], []
        for i in range(args.n):
            target = work / f"ours{i}"
            t0 = time.perf_counter()
            pull(ref, ImageStore(target / "oci"), settings, layers_dir=target / "layers")
            ours.append(time.perf_counter() - t0)
            shutil.rmtree(target)

            target = work / f"peer{i}"
            target.mkdir()
            t0 = time.perf_counter()
            subprocess.run(["skopeo", "copy", "--quiet", "--src-tls-verify=false",
                            f"docker://{ref}", f"oci:{target}/oci:v1"], check=True,
                           capture_output=True)
            subprocess.run(["umoci", "unpack", "--image", f"{target}/oci:v1",
                            str(target / "bundle")], check=True, capture_output=True)
            peer.append(time.perf_counter() - t0)
            shutil.rmtree(target)
        size = sum(p.stat().st_size for p in (work / "src/blobs/sha256").iterdir())
        print(json.dumps({
            "image": {"layers": args.layers + 1, "compressed_bytes": size,
                      "uncompressed_mib": args.layers * args.mib},
            "rounds": args.n,
            "thingdoer_pull_unpack_s": {"median": round(statistics.median(ours), 4),
                                        "p90": round(percentile(ours, 0.9), 4)},
            "skopeo_umoci_s": {"median": round(statistics.median(peer), 4),
                               "p90": round(percentile(peer, 0.9), 4)},
            "median_ratio_thingdoer_over_peer": round(statistics.median(ours)
                                                      / statistics.median(peer), 3),
        }, indent=2))
    finally:
        registry.stop()
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
