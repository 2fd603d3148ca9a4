"""Local CKN descriptors of images: patches batched across images beside the encoder's rate.

Command (from the project root; about 10 minutes on the loaded 2-core CPU):

    nice python benchmarks/bench_local.py [--preset ckn-grad] [--repeats 2] \\
        [--out benchmarks/results/bench_local_cpu.json]

The model: the preset with random unit filters, as ``bench_encode.py`` times it (the cost
does not depend on the filter values), saved with ``ckn.save`` and read back as
``eval-images --local MODEL_DIR`` / ``ckn index build --local MODEL_DIR`` read it
(``retrieval.local.make_local_describer(MODEL_DIR)``). The images: the 16 scikit-image photos
and crops of ``bench_index.py``, default :class:`retrieval.local.LocalConfig` (up to 1000
regions per image, max side 1024).

Measured, each after one untimed pass (compilation), in ``--repeats`` rounds of the three
(so that a load drifting during the run weighs on all alike), median over the rounds:

* ``encode``: ``ckn.describe`` of seeded random uint8 patches of the preset's size
  (bench_encode's ``describe`` figure, in the same run and load);
* ``batched``: ``describe_images`` (what the two commands run): regions, patches and the
  describer, the patches of consecutive images described together ``PATCH_BATCH`` at a
  time; images/s and patches/s end to end, and patches/s of the describer calls alone;
* ``image_by_image``: ``local_features`` one image after the other (the path before).

Target (issue 23): patches/s >= 80% of ``encode``'s for the same model (the describer
calls alone; the end-to-end rate adds the region detection and patch sampling on the same
cores). The 1-minute load average is recorded at the start and the end.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from flax import nnx

sys.path.insert(0, str(Path(__file__).resolve().parent))
import bench_common as bc  # noqa: E402

import ckn  # noqa: E402
from retrieval.local import (  # noqa: E402
    PATCH_BATCH,
    LocalConfig,
    describe_images,
    local_features,
    make_local_describer,
)
from retrieval.patches import read_image  # noqa: E402


def rates(feats, wall: float, images: int) -> dict:
    patches = sum(len(f.descriptors) for f in feats)
    describe_s = sum(f.seconds_describe for f in feats)
    return {
        "images": images, "patches": patches, "wall_s": wall,
        "images_per_s": images / wall, "patches_per_s": patches / wall,
        "seconds_regions": sum(f.seconds_regions for f in feats),
        "seconds_describe": describe_s, "describe_patches_per_s": patches / describe_s,
    }  # fmt: skip


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--preset", default="ckn-grad")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--encode-patches", type=int, default=4096)
    p.add_argument("--out", default=str(bc.RESULTS / "bench_local_cpu.json"))
    args = p.parse_args(argv)
    meta = bc.metadata()
    bc.check_load("bench_local")
    cfg = ckn.get_preset(args.preset)
    model = ckn.CKN(cfg, rngs=nnx.Rngs(0))
    config = LocalConfig()
    with tempfile.TemporaryDirectory(prefix="bench_local.") as tmp:
        tmp = Path(tmp)
        ckn.save(model, tmp / "model")
        describer = make_local_describer(str(tmp / "model"))
        paths = sorted(bc.photo_folder(tmp / "photos").iterdir())
        arrays = [read_image(q) for q in paths]

        s = cfg.patch_size
        shape = (args.encode_patches, s, s, 3) if describer.color else (args.encode_patches, s, s)
        patches = np.random.default_rng(0).integers(0, 256, shape, dtype=np.uint8)

        def encode_once():
            ckn.describe(model, patches)

        def batched():
            return describe_images(arrays, describer, config=config, progress=False)

        def one_by_one():
            return [local_features(a, describer, config=config) for a in arrays]

        paths_ = (("batched", batched), ("image_by_image", one_by_one))
        encode_once()  # compiles
        for _, fn in paths_:
            fn()
        # Rounds of (encode, batched, image by image): a load that drifts during the run
        # weighs on the three alike.
        enc_times, runs = [], {name: [] for name, _ in paths_}
        for _ in range(args.repeats):
            enc_times += bc.time_repeats(encode_once, repeats=1, warmup=0)
            for name, fn in paths_:
                t = time.perf_counter()
                feats = fn()
                runs[name].append(rates(feats, time.perf_counter() - t, len(arrays)))
        enc = bc.stats(enc_times)
        encode = {"patches": len(patches), "patches_per_s": len(patches) / enc["median_s"], **enc}
        print(f"encode: {encode['patches_per_s']:.1f} patches/s", flush=True)
        rows = {}
        for name, _ in paths_:
            best = sorted(runs[name], key=lambda r: r["wall_s"])[len(runs[name]) // 2]
            rows[name] = {**best, "runs": runs[name]}
            print(
                f"{name}: {best['images_per_s']:.2f} images/s, {best['patches_per_s']:.1f} "
                f"patches/s end to end, describer alone {best['describe_patches_per_s']:.1f} "
                f"patches/s = {best['describe_patches_per_s'] / encode['patches_per_s']:.0%} "
                "of encode",
                flush=True,
            )
    b = rows["batched"]
    result = {
        "preset": args.preset, "patch_size": s, "descriptor_dim": describer.dim,
        "local_config": dataclasses.asdict(config),
        "patch_batch": PATCH_BATCH, "encode": encode, **rows,
        "describe_fraction_of_encode": b["describe_patches_per_s"] / encode["patches_per_s"],
        "end_to_end_fraction_of_encode": b["patches_per_s"] / encode["patches_per_s"],
    }  # fmt: skip
    target = {"describe_fraction_min": 0.8,
              "met": result["describe_fraction_of_encode"] >= 0.8}  # fmt: skip
    bc.write_json(args.out, meta, [result], target=target)
    return 0


if __name__ == "__main__":
    sys.exit(main())
