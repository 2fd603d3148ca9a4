"""README speed figures: the Lite backbones, the index, encoding, k-means, memory, the peer
(bench_backbone_cpu, bench_index_cpu, bench_encode_cpu, bench_kmeans_cpu, bench_memory_cpu,
bench_peer_cpu). Every figure names its machine (``speed_note``); a ratio is only taken
between figures of one run."""

from __future__ import annotations

from .core import commit, cpu, host_runs, para, renderer, speed_note, table


@renderer("backbone_run")
def backbone_run(results) -> str:
    """Where the backbone speed table comes from, and the machine's matmul rate in that run."""
    doc = results["bench_backbone_cpu"]
    setup = doc["setup"]
    diffs = [r["max_abs_diff"] for r in doc["results"] if "max_abs_diff" in r]
    torch = setup.get("torch") or {}
    return para(
        "Speed, EfficientNet-Lite `features` beside PyTorch on the same weights (`nice python"
        " benchmarks/bench_backbone.py`, `benchmarks/results/bench_backbone_cpu.json`;"
        f" {speed_note(doc)}; the machine's fp32 matmul rate measured in the same run:"
        f" {doc['matmul']['gflops']:.1f} GFLOP/s, {doc['matmul_end']['gflops']:.1f} at the end;"
        " FLOPs counted analytically, 2 per multiply-add). PyTorch"
        f" {torch.get('torch', 'n/a')} is the `efficientnet_lite_pytorch` package's network,"
        f" {torch.get('threads', 'n/a')} threads: plain (NCHW), tuned (channels_last and the"
        " allocator settings of the script's docstring), passive (tuned + OMP_WAIT_POLICY=PASSIVE);"
        f" its features differ from ours by at most {max(diffs, default=float('nan')):.1e}"
        " (values in [0, 6]). Only ratios within the run are meaningful on a loaded machine:"
    )


def _ips(row: dict, key: str) -> str:
    return f"{row[key]:.2f}" if row.get(key) is not None else "n/a"


@renderer("backbone_table")
def backbone_table(results) -> str:
    """Images/s of Lite features per backbone, image size and batch: JAX, PyTorch, matmul."""
    rows = [
        [
            r["backbone"].replace("efficientnet-", ""),
            f"{r['size']} px",
            r["batch"],
            _ips(r, "jax_images_per_s"),
            _ips(r, "torch_plain_images_per_s"),
            _ips(r, "torch_tuned_images_per_s"),
            _ips(r, "torch_passive_images_per_s"),
            f"{100 * r['fraction_of_matmul']:.1f}%",
        ]
        for r in sorted(
            results["bench_backbone_cpu"]["summary"],
            key=lambda r: (r["backbone"], r["size"], r["batch"]),
        )
    ]
    header = [
        "network", "image", "batch", "JAX images/s", "torch plain", "torch tuned",
        "torch passive", "JAX: fraction of that run's matmul rate",
    ]  # fmt: skip
    summary = results["bench_backbone_cpu"]["summary"]
    n = len(summary)
    frac = sum(r["goal_fraction_met"] for r in summary)
    every = sum(bool(r["goal_torch_met"]) for r in summary)
    tuned = sum(
        r["jax_images_per_s"] >= (r.get("torch_tuned_images_per_s") or float("inf"))
        for r in summary
    )
    goals = para(
        f"Goals of issue 23 in this run: JAX at >= 50% of the run's fp32 matmul rate in {frac} of"
        f" {n} rows; JAX at least as fast as tuned torch in {tuned} of {n}, as every PyTorch"
        f" mode (passive included) in {every} of {n}."
    )
    return table(header, rows) + "\n\n" + goals


def _index_rows(doc: dict) -> dict[tuple[int, str], dict]:
    return {(r["n"], r["method"]): r for r in doc["results"]}


def _ms(seconds: float) -> str:
    ms = 1e3 * seconds
    return f"{ms:.0f} ms" if ms >= 10 else f"{ms:.1f} ms" if ms >= 1 else f"{ms:.2f} ms"


@renderer("index_run")
def index_run(results) -> str:
    """Where the index latency table comes from."""
    doc = results["bench_index_cpu"]
    return para(
        "Query latency, one 512-D query, warm, search only (`python benchmarks/bench_index.py`,"
        f" `benchmarks/results/bench_index_cpu.json`; {speed_note(doc)}; median of"
        f" {doc['results'][0]['latency']['repeats']} queries):"
    )


@renderer("index_table")
def index_table(results) -> str:
    """Exact and IVF-PQ latency and recall@10 per collection size."""
    rows = _index_rows(results["bench_index_cpu"])
    out = []
    for n in sorted({k[0] for k in rows}):
        ex, rr, raw = rows[(n, "exact")], rows[(n, "ivfpq_rerank")], rows[(n, "ivfpq_raw")]
        out.append(
            [
                f"{n:,}",
                _ms(ex["latency"]["median_s"]),
                _ms(rr["latency"]["median_s"]),
                f"{rr['recall_at_10']:.2f} / {raw['recall_at_10']:.2f}",
            ]
        )
    header = [
        "vectors",
        "exact",
        "IVF-PQ + exact re-scoring",
        "recall@10 (re-scored / faiss alone)",
    ]
    return table(header, out)


@renderer("index_reading")
def index_reading(results) -> str:
    """IVF-PQ training and loading, the query command's compile time, the warm query."""
    doc = results["bench_index_cpu"]
    rows = _index_rows(doc)
    n = max(k[0] for k in rows)
    rr = rows[(n, "ivfpq_rerank")]
    e2e = doc["end_to_end"]
    wall = e2e["query_command_wall"]
    cached = e2e["query_command_wall_compilation_cache"]["reading"]
    return para(
        "The synthetic vectors are clustered and easy (`nprobe`"
        f" {rr['search']['ivfpq']['nprobe']});"
        " real collections may need a larger `nprobe`. Training the IVF-PQ index on"
        f" {n:,} vectors took {rr['build_s']:.0f} s; it is saved with the index (reading it back:"
        f" {rr['load_s']['median_s']:.2f} s). A single `ckn index query` process on"
        f" {e2e['images']} images spends most of its {wall['median_s']:.0f} s (median of"
        f" {wall['repeats']}) compiling the three scales' networks; with"
        f" `JAX_COMPILATION_CACHE_DIR` set it took {cached['median_s']:.0f} s, and a warm"
        f" in-process query {_ms(e2e['in_process_warm_query']['median_s'])} (same run and"
        " machine)."
    )


def _matmul(doc: dict) -> str:
    """The fp32 matmul rate of a run (bench_encode records one per precision)."""
    rate = doc["matmul"].get("highest", doc["matmul"])
    return f"{rate['gflops']:.1f} GFLOP/s"


@renderer("speed_intro")
def speed_intro(results) -> str:
    """The machines of the speed table and their matmul rates."""
    runs = {
        "bench_encode.py": results["bench_encode_cpu"],
        "bench_kmeans.py": results["bench_kmeans_cpu"],
        "bench_peer.py": results["bench_peer_cpu"],
    }
    listed = "; ".join(f"{name}: {_matmul(doc)} ({speed_note(doc)})" for name, doc in runs.items())
    return para(
        "Each figure sits beside the machine's own fp32 matrix-multiply rate measured in the same"
        " run (best of jitted `jnp.dot` and NumPy's OpenBLAS on n x n matrices, n = 1024-3072),"
        " and names the machine it ran on; a ratio is only taken between figures of one run. The"
        f" runs: {listed}; `bench_memory.py`: {speed_note(results['bench_memory_cpu'])}."
    )


def _describe(doc: dict, preset: str) -> dict:
    """The fp32 ("highest") result of a preset."""
    return next(r for r in doc["results"] if r["preset"] == preset and r["precision"] == "highest")


def _target(doc: dict, preset: str) -> dict:
    return next(t for t in doc["targets"] if t["preset"] == preset and t["precision"] == "highest")


def _split(result: dict) -> str:
    """``"layer 1 21% of the time for 5% of the FLOPs (19% of matmul), ..."``."""
    parts = [p for p in result["layers"] if p["flop_share"] > 0]
    return ", ".join(
        f"{p['part']} {100 * p['time_share']:.0f}% of the time for"
        f" {100 * p['flop_share']:.0f}% of the FLOPs ({100 * p['fraction_of_matmul']:.0f}% of"
        " matmul)"
        for p in parts
    )


@renderer("speed_table")
def speed_table(results) -> str:
    """Encoding, k-means, streaming memory, and the PyTorch peer."""
    enc, km, mem, peer = (
        results[k]
        for k in ("bench_encode_cpu", "bench_kmeans_cpu", "bench_memory_cpu", "bench_peer_cpu")
    )
    ref, grad = _describe(enc, "ckn-ref64"), _describe(enc, "ckn-grad")
    d = ref["describe"]
    kern = next(k for k in ref["kernel"] if k["group"] == ref["group"])
    side = {r["side"]: r for r in peer["results"]}
    sweep = [s["patches_per_s"] for s in side["peer"]["batch_sweep"]] + [
        side["peer"]["patches_per_s"]
    ]
    ratio = peer["comparison"]["encode_patches_per_s_ratio_ckn_over_peer"]
    fits = {r["method"]: r for r in km["results"]}
    ck, fa = fits["ckn.kmeans"], fits["faiss.Kmeans"]
    mrows = {r["patches"]: r for r in mem["results"]}
    small, big, base = mrows[10_000], mrows[100_000], mrows[100]
    setup = km["setup"]
    rows = [
        [
            "encode, reference configuration `ckn-ref64` (raw 64x64, 3x3, 64 then 256 filters,"
            f" subsampling 2 then 6, {ref['gflop_per_patch']:.3f} GFLOP/patch)",
            f"**{d['patches_per_s']:.0f} patches/s = {d['gflops']:.1f} GFLOP/s ="
            f" {100 * d['fraction_of_matmul']:.0f}% of matmul** (spread"
            f" {d['min_s'] / d['median_s']:.2f}-{d['max_s'] / d['median_s']:.2f}; jitted call"
            f" alone {kern['patches_per_s']:.0f} patches/s,"
            f" {100 * kern['fraction_of_matmul']:.0f}%); compile {ref['compile_s']:.1f} s;"
            f" {speed_note(enc)}",
            f"target {100 * _target(enc, 'ckn-ref64')['fraction_of_matmul']:.0f}%"
            f" ({'met' if _target(enc, 'ckn-ref64')['met'] else 'not met'}; split by part:"
            f" {_split(ref)}); the public PyTorch CKN,"
            " same configuration, back to back in one run: `ckn`"
            f" {side['ckn']['patches_per_s']:.0f} against {side['peer']['patches_per_s']:.1f}"
            f" patches/s, **ratio {ratio:.1f}** (`python benchmarks/bench_peer.py --no-kmeans`,"
            f" `bench_peer_cpu.json`; {speed_note(peer)}; the peer's speed varied"
            f" {min(sweep):.0f}-{max(sweep):.0f} patches/s between its own batch sizes, so the"
            " ratio is noisy)",
            "`python benchmarks/bench_encode.py` (`bench_encode_cpu.json`)",
        ],
        [
            f"encode, `ckn-grad` (51x51, {grad['gflop_per_patch']:.4f} GFLOP/patch)",
            f"{grad['describe']['patches_per_s']:,.0f} patches/s ="
            f" {grad['describe']['gflops']:.1f} GFLOP/s ="
            f" {100 * grad['describe']['fraction_of_matmul']:.0f}% of matmul; compile"
            f" {grad['compile_s']:.1f} s; same run",
            f"target {100 * _target(enc, 'ckn-grad')['fraction_of_matmul']:.0f}%"
            f" ({'met' if _target(enc, 'ckn-grad')['met'] else 'not met'}; split by part:"
            f" {_split(grad)}: small maps, the exponentials and pooling weigh more than the"
            " products)",
            "same",
        ],
        [
            f"unsupervised training: spherical k-means, {setup['n']:,} x {setup['d']} ->"
            f" {setup['k']}, {setup['iters']} iterations (real layer-2 sub-patches of ckn-ref64)",
            f"**`ckn.unsupervised.kmeans` {ck['median_s']:.1f} s**, J = {ck['objective']:.5f};"
            f" {ck['gflops']:.1f} GFLOP/s ({100 * ck['fraction_of_matmul']:.0f}% of matmul);"
            f" compile {ck['compile_s']:.1f} s; {speed_note(km)}",
            "faiss `Kmeans(spherical=True, max_points_per_centroid=n)`, both threads, same data,"
            f" same run: {fa['median_s']:.1f} s, J = {fa['objective']:.5f} (ratio"
            f" {km['target']['time_ratio_ckn_over_faiss']:.2f}, target <= 1)",
            "`python benchmarks/bench_kmeans.py` (`bench_kmeans_cpu.json`)",
        ],
        [
            "streaming: peak RSS of `ckn describe` (CLI, memory-mapped .npy in and out, ckn-grad)",
            f"10^4 patches: {small['peak_rss_mb']:.0f} MB; 10^5 patches ({big['input_mb']:.0f} MB"
            f" in, {big['output_mb']:.0f} MB out): {big['peak_rss_mb']:.0f} MB (ratio"
            f" {mem['target']['ratio']:.2f}); 100-patch baseline {base['peak_rss_mb']:.0f} MB",
            "must not be ~10x",
            "`python benchmarks/bench_memory.py` (`bench_memory_cpu.json`)",
        ],
    ]
    return table(["what", "figure", "machine limit / peer", "command (results JSON)"], rows)


@renderer("encode_hosts")
def encode_hosts(results) -> str:
    """ckn-ref64 and ckn-grad describe against each host's fp32 matmul rate, one row per host."""
    rows = []
    for name, doc in host_runs(results, "bench_encode_cpu"):
        cells = []
        for preset in ("ckn-ref64", "ckn-grad"):
            d, t = _describe(doc, preset)["describe"], _target(doc, preset)
            cells.append(
                f"{d['patches_per_s']:,.0f} patches/s = {100 * d['fraction_of_matmul']:.0f}%"
                f" ({'met' if t['met'] else 'not met'})"
            )
        rows.append([f"`{name}`", speed_note(doc), commit(doc), _matmul(doc), *cells])
    header = [
        "run", "machine", "code", "fp32 matmul", "ckn-ref64 (target 70%)",
        "ckn-grad (target 50%)",
    ]  # fmt: skip
    return table(header, rows)


@renderer("backbone_hosts")
def backbone_hosts(results) -> str:
    """Lite0 features per host: images/s and fraction of that run's matmul, per size and batch."""
    rows = []
    for name, doc in host_runs(results, "bench_backbone_cpu"):
        lite0 = sorted(
            (r for r in doc["summary"] if r["backbone"] == "efficientnet-lite0"),
            key=lambda r: (r["size"], r["batch"]),
        )
        cells = "; ".join(
            f"{r['size']} px b{r['batch']} {r['jax_images_per_s']:.1f}"
            f" ({100 * r['fraction_of_matmul']:.0f}%)"
            for r in lite0
        )
        met = sum(r["goal_fraction_met"] for r in doc["summary"])
        rows.append(
            [
                f"`{name}`",
                cpu(doc),
                commit(doc),
                f"{doc['matmul']['gflops']:.1f} GFLOP/s",
                cells,
                f"{met} of {len(doc['summary'])}",
            ]
        )
    header = [
        "run", "machine", "code", "fp32 matmul", "Lite0 images/s (fraction of matmul)",
        "rows at >= 50%",
    ]  # fmt: skip
    return table(header, rows)
