"""README figures of the index in shards at a million images (bench_scale_cpu; the describing
rate extrapolated from bench_backbone_cpu). Every figure says whether it was measured at 1e6
or extrapolated, and from what."""

from __future__ import annotations

from .core import busy, para, renderer, run, table


def _mib(nbytes: float) -> str:
    return f"{nbytes / 2**20:,.0f} MiB"


def _ms(seconds: float) -> str:
    return f"{1e3 * seconds:.1f} ms"


def _describe_rate(results) -> dict:
    """The one-process JAX row of EfficientNet-Lite0 at 512 px, batch 1 (bench_backbone_cpu)."""
    rows = results["bench_backbone_cpu"]["results"]
    return next(
        r
        for r in rows
        if r["impl"] == "jax"
        and r["backbone"] == "efficientnet-lite0"
        and r["size"] == 512
        and r["batch"] == 1
        and r["precision"] == "highest"
    )


@renderer("scale_run")
def scale_run(results) -> str:
    """Where the shard figures come from."""
    doc = results["bench_scale_cpu"]
    cfg = doc["config"]
    return para(
        f"Measured with `nice python benchmarks/bench_scale.py` ({run(doc, 'bench_scale_cpu')}):"
        f" {cfg['n']:,} synthetic {cfg['dim']}-D vectors drawn around {cfg['centres']:,} centres"
        f" (clustered like global descriptors), {cfg['parts']} parts, every step in a process of"
        " its own (its peak resident memory its own), recall@10 of"
        f" {cfg['queries']:,} held-out queries against exact search"
        + (
            " (other jobs shared the CPU during the run: the times are noisy and slower than on"
            " a quiet machine; recall, memory and disk are not affected):"
            if busy(doc)
            else ":"
        )
    )


@renderer("scale_costs")
def scale_costs(results) -> str:
    """What each step costs per 1e6 images: measured (vectors) or extrapolated (describing)."""
    doc = results["bench_scale_cpu"]
    cfg, r, steps = doc["config"], doc["results"][0], doc["steps"]
    rss = r["peak_rss_mib"]
    rate = _describe_rate(results)["images_per_s"]
    per_part = cfg["n"] // cfg["parts"]
    hours = cfg["n"] / rate / 3600
    q = steps["query"]
    rows = [
        [
            "describe (GeM of EfficientNet-Lite0, one 512-px scale)",
            f"{hours:,.0f} h in one process; {hours / cfg['parts']:,.1f} h with"
            f" {cfg['parts']} shards on {cfg['parts']} machines",
            "n/a",
            f"extrapolated: {rate:.1f} images/s (`bench_backbone_cpu.json`, one process)",
        ],
        [
            f"fit (IVF-PQ quantizer trained on a {cfg['sample']:,}-vector sample)",
            f"{r['fit_s']:.0f} s",
            _mib(rss["fit"] * 2**20),
            f"measured (describing the sample: {cfg['sample']:,} more images at the rate above)",
        ],
        [
            f"add, {cfg['parts']} parts of {per_part:,}",
            f"{r['part_add_s_median']:.0f} s per part (median), {r['part_add_s_total']:.0f} s"
            " in all",
            _mib(rss["part_max"] * 2**20) + " (largest part)",
            "measured",
        ],
        [
            "merge (inverted lists on disk)",
            f"{r['merge_s']:.0f} s",
            _mib(rss["merge"] * 2**20),
            "measured",
        ],  # fmt: skip
        [
            f"query (nprobe {r['nprobe']}, re-scored)",
            f"{_ms(q['single_query_s']['median_s'])} single, {_ms(q['batched_per_query_s'])}"
            f" per query in batches of {q['batch']}; recall@10 {r['recall_at_10_rescored']:.3f}",
            _mib(rss["query"] * 2**20),
            "measured",
        ],
        [
            "disk (merged index: vectors, inverted lists, paths)",
            f"{r['index_bytes_per_vector'] * cfg['n'] / 1e9:.1f} GB"
            f" ({r['index_bytes_per_vector']:,.0f} bytes per image)",
            "n/a",
            "measured",
        ],
    ]
    out = table(["step", "per 1e6 images", "peak RSS", "how known"], rows)
    real = r.get("real_images")
    if real is not None:  # runs before the real-image step have none
        verdict = "the same" if real["equal_to_one_build"] else "NOT the same"
        out += "\n\n" + para(
            f"Real images, same run: {real['images']} photos indexed by one `ckn index build` and"
            f" by `ckn index fit` + {real['parts']} `--shard` parts + `ckn index merge` answer a"
            f" query with {verdict} top-10 (paths equal: {real['top10_paths_equal']}; largest"
            f" score difference {real['max_abs_score_diff']:.1e})."
        )
    return out


@renderer("scale_nprobe")
def scale_nprobe(results) -> str:
    """The nprobe sweep behind ``IndexSettings.nprobe``'s default."""
    doc = results["bench_scale_cpu"]
    q = doc["steps"]["query"]
    rows = [
        [
            str(s["nprobe"]),
            f"{s['recall_at_10_rescored']:.3f}",
            f"{s['recall_at_10_raw']:.3f}",
            _ms(s["single_query_s"]["median_s"]),
            _ms(s["batched_per_query_s"]),
        ]
        for s in q["nprobe_sweep"]
    ]
    header = ["nprobe", "recall@10 re-scored", "faiss alone", "single query", "batched, per query"]
    return table(header, rows)
