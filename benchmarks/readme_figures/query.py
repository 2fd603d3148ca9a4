"""README figures of querying an index and of local CKN descriptors of images (bench_query_cpu,
bench_local_cpu). Every figure names its machine (``speed_note``); ratios are taken within one
run."""

from __future__ import annotations

from .core import para, renderer, speed_note


@renderer("local_speed")
def local_speed(results) -> str:
    """Images/s and patches/s of local CKN descriptors beside the encoder in the same run."""
    doc = results["bench_local_cpu"]
    r = doc["results"][0]
    b, one, enc = r["batched"], r["image_by_image"], r["encode"]
    return para(
        f"Local CKN descriptors of images (`{r['preset']}` saved as a model folder, as"
        " `eval-images --local MODEL_DIR` and `ckn index build --local MODEL_DIR` read it;"
        f" {b['images']} photos, {b['patches']:,} patches; `nice python"
        " benchmarks/bench_local.py`, `benchmarks/results/bench_local_cpu.json`;"
        f" {speed_note(doc)}): patches batched across images"
        f" ({r['patch_batch']} per call), {b['images_per_s']:.2f} images/s and"
        f" {b['patches_per_s']:.1f} patches/s end to end, the describer alone"
        f" {b['describe_patches_per_s']:.1f} patches/s ="
        f" {100 * r['describe_fraction_of_encode']:.0f}% of `ckn.describe`'s"
        f" {enc['patches_per_s']:.1f} in the same run (target 80%); image by image"
        f" {one['images_per_s']:.2f} images/s, {one['describe_patches_per_s']:.1f} patches/s"
        f" for the describer. Region detection and patch sampling took"
        f" {100 * b['seconds_regions'] / b['wall_s']:.0f}% of the time."
    )
