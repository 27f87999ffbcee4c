"""Speed of the synthetic generator, one process, at the book's default size and at the real
1991 x 1127: images/s of ``render_panoramic`` alone and of ``generate_dataset`` (render + JPEG +
JSON), against JPEG-encoding the same images (the reference, measured in the same run).

Rates are given in wall-clock time and in this process's CPU time: the generator is
single-threaded, so on a shared machine the CPU-time rate is what one free core would do.

    python benchmarks/bench_synthetic.py [--images 24] [--out results.json]
"""

from __future__ import annotations

import argparse
import io
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from PIL import Image  # noqa: E402

from _common import write_results  # noqa: E402
from oralx_lib.data.synthetic import DEFAULTS, generate_dataset, image_rng, render_panoramic  # noqa: E402


class _Clock:
    """Wall-clock and process CPU seconds of a ``with`` block."""

    def __enter__(self):
        self.w, self.c = time.perf_counter(), time.process_time()
        return self

    def __exit__(self, *exc):
        self.wall, self.cpu = time.perf_counter() - self.w, time.process_time() - self.c


def measure(width: int, height: int, n: int) -> dict:
    render_panoramic(image_rng(0, "train", 0), width, height)  # warm-up (imports, caches)
    images = []
    with _Clock() as render:
        for i in range(n):
            images.append(render_panoramic(image_rng(0, "train", i), width, height)[0])
    with _Clock() as jpeg:
        for img in images:
            Image.fromarray(img, mode="L").save(io.BytesIO(), format="JPEG", quality=92)
    with tempfile.TemporaryDirectory() as tmp, _Clock() as gen:
        generate_dataset(tmp, train=n, val=0, test=0, seed=0, width=width, height=height, progress=False)
    return {
        "size": f"{width}x{height}",
        "images": n,
        "render_images_per_s": n / render.wall,
        "generate_images_per_s": n / gen.wall,
        "jpeg_encode_images_per_s": n / jpeg.wall,
        "render_images_per_cpu_s": n / render.cpu,
        "generate_images_per_cpu_s": n / gen.cpu,
        "jpeg_encode_images_per_cpu_s": n / jpeg.cpu,
        "render_over_jpeg_cpu": render.cpu / jpeg.cpu,
        "cpu_share": gen.cpu / gen.wall,
    }


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=24, help="images per size (default 24)")
    parser.add_argument("--out", default=None, help="write the results and provenance as JSON")
    args = parser.parse_args(argv)

    sizes = [(DEFAULTS["width"], DEFAULTS["height"]), (1991, 1127)]
    rows = [measure(w, h, args.images) for w, h in sizes]
    default_total = DEFAULTS["train"] + DEFAULTS["val"] + DEFAULTS["test"]
    print("images/s, wall clock (per CPU second in brackets)")
    print(f"{'size':>10} {'render':>16} {'generate':>16} {'jpeg only':>16} {'render/jpeg':>12} {'cpu share':>10}")
    for r in rows:
        print(f"{r['size']:>10} "
              f"{r['render_images_per_s']:6.2f} ({r['render_images_per_cpu_s']:6.2f}) "
              f"{r['generate_images_per_s']:6.2f} ({r['generate_images_per_cpu_s']:6.2f}) "
              f"{r['jpeg_encode_images_per_s']:6.1f} ({r['jpeg_encode_images_per_cpu_s']:6.1f}) "
              f"{r['render_over_jpeg_cpu']:12.1f} {r['cpu_share']:10.2f}")
    est_wall = default_total / rows[0]["generate_images_per_s"]
    est_cpu = default_total / rows[0]["generate_images_per_cpu_s"]
    print(f"default set ({default_total} images at {rows[0]['size']}): {est_wall:.0f} s wall here, "
          f"{est_cpu:.0f} s on one free core")
    write_results(args.out, {"benchmark": "synthetic generator", "rows": rows,
                             "default_set_seconds_wall": est_wall,
                             "default_set_seconds_one_core": est_cpu})


if __name__ == "__main__":
    main()
