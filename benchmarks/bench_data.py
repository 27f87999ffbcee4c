"""Data-loading throughput: images/s through ``OralXrays9`` + the released training transforms
with a ``DataLoader``, at the real 1991 x 1127 size, against plain image decoding of the same
files (the reference, in the same run). Also times the synthetic generator.

    python benchmarks/bench_data.py [--images 48] [--workers 0 2] [--out FILE.json]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import torch  # noqa: E402
from PIL import Image  # noqa: E402
from torch.utils.data import DataLoader  # noqa: E402

from _common import write_results  # noqa: E402
from oralx_lib.data import OralXrays9, collate_fn  # noqa: E402
from oralx_lib.data.synthetic import generate_dataset  # noqa: E402
from oralx_lib.data.transforms import train_transforms  # noqa: E402


def images_per_second(loader, n_images: int) -> float:
    start = time.perf_counter()
    seen = 0
    for images, _ in loader:
        seen += len(images)
    assert seen == n_images
    return seen / (time.perf_counter() - start)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=48)
    parser.add_argument("--width", type=int, default=1991)
    parser.add_argument("--height", type=int, default=1127)
    parser.add_argument("--workers", type=int, nargs="+", default=[0, 2])
    parser.add_argument("--out", default=None)
    args = parser.parse_args(argv)
    torch.set_num_threads(1)

    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        start = time.perf_counter()
        generate_dataset(tmp, train=args.images, val=0, test=0, seed=0, width=args.width,
                         height=args.height, progress=False)
        gen_rate = args.images / (time.perf_counter() - start)
        rows.append({"what": f"synthetic generator, {args.width}x{args.height}, 1 process",
                     "images_per_s": gen_rate})

        plain = OralXrays9(tmp, "train")
        start = time.perf_counter()
        for i in range(len(plain)):
            with Image.open(plain.image_path(i)) as im:
                im.convert("L").load()
        rows.append({"what": "reference: PIL decode only, 1 process",
                     "images_per_s": len(plain) / (time.perf_counter() - start)})
        for workers in args.workers:
            for preset in ("none", "released"):
                ds = OralXrays9(tmp, "train", transforms=train_transforms(preset, resize=True)
                                if preset != "none" else None)
                loader = DataLoader(ds, batch_size=2, shuffle=True, num_workers=workers,
                                    collate_fn=collate_fn,
                                    generator=torch.Generator().manual_seed(0))
                images_per_second(loader, len(ds))  # warm-up (page cache, worker start)
                rate = images_per_second(loader, len(ds))
                rows.append({"what": f"OralXrays9 + {preset} transforms, DataLoader "
                                     f"workers={workers}, batch 2", "images_per_s": rate})
    print(f"{'measurement':<72} images/s")
    for r in rows:
        print(f"{r['what']:<72} {r['images_per_s']:8.1f}")
    write_results(args.out, {"size": [args.width, args.height], "images": args.images,
                             "rows": rows})


if __name__ == "__main__":
    main()
