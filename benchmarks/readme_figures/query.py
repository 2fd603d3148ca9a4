"""README figures of querying an index and of local CKN descriptors of images (bench_query_cpu,
bench_local_cpu). Every figure names its machine (``speed_note``); ratios are taken within one
run."""

from __future__ import annotations

from .core import commit, host_runs, para, renderer, speed_note, table


def _s(x: float) -> str:
    return f"{x:.2f} s" if x < 10 else f"{x:.0f} s"


@renderer("query_speed")
def query_speed(results) -> str:
    """First / second ``ckn index query`` process, new-size and batched queries, the goals."""
    doc = results["bench_query_cpu"]
    r = doc["results"][0]
    proc, ip, b = r["process"], r["in_process"], r["batch"]
    goals = doc["goals"]
    scales = r["settings"]["describer"]["config"]["global_config"]["scales"]
    return para(
        f"At {r['indexed']:,} indexed vectors ({r['dim']}-D, IVF-PQ trained on"
        f" {r.get('ivfpq_train_vectors', r['indexed']):,}; `nice python"
        " benchmarks/bench_query.py`, `benchmarks/results/bench_query_cpu.json`, code at"
        f" {doc['metadata']['commit'][:7]}; {speed_note(doc)}), `ckn index query` on a"
        f" {ip['query_image'].split()[-1]} photo took"
        f" {_s(proc['first']['wall_s'])} in a first process (empty cache),"
        f" {_s(proc['second']['median_s'])} in a second one (median of"
        f" {proc['second']['repeats']}; goal 3 s:"
        f" {'met' if goals['second_process_met'] else 'not met'}) and"
        f" {_s(proc['no_cache']['wall_s'])} with `CKN_COMPILE_CACHE=0`. In Python, a query of a"
        f" new size inside compiled buckets took {_s(ip['warm_new_size']['median_s'])}"
        f" ({ip['warm_new_size_compilations']} compilations),"
        f" {ip['warm_new_size_over_forward']:.2f} times one forward pass of the image alone"
        f" ({_s(ip['forward_pass']['median_s'])};"
        f" goal 2: {'met' if goals['warm_new_size_met'] else 'not met'}; its"
        f" {len(scales)} scales hold {sum(x * x for x in scales):.2f} times the first one's"
        " pixels)"
        f"{_every_scale(ip)}; a query needing new buckets"
        f" {_s(ip['new_bucket_s'])} ({ip['new_bucket_compilations']} compilations)."
        f" {b['queries']} queries of {b['distinct_sizes']} sizes in one `query_images` call:"
        f" {_s(b['cold_s'])} with {b['cold_compilations']} compilations, then"
        f" {_s(b['warm_s'])} warm ({_s(b['warm_per_query_s'])} per query)."
    )


def _every_scale(ip: dict) -> str:
    """The new-size query beside the backbone at every scale without buckets, and beside a
    query of a size seen before (absent from JSONs before these were measured)."""
    if "forward_every_scale" not in ip:
        return ""
    alone = (
        f", which alone take {ip['every_scale_over_forward']:.2f} times one forward pass"
        if "every_scale_over_forward" in ip
        else ""
    )
    rounds = f" (timed in {ip['rounds']} interleaved rounds)" if "rounds" in ip else ""
    return (
        f", {ip['warm_new_size_over_every_scale']:.2f} times the backbone at every scale without"
        f" buckets ({_s(ip['forward_every_scale']['median_s'])}{alone}) and"
        f" {ip['warm_new_size_over_same_size']:.2f} times a query of a size seen before{rounds}"
    )


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


@renderer("query_hosts")
def query_hosts(results) -> str:
    """The query goals and local descriptors on each host they were measured on."""
    rows = []
    for name, doc in host_runs(results, "bench_query_cpu"):
        r, goals = doc["results"][0], doc["goals"]
        proc, ip, b = r["process"], r["in_process"], r["batch"]
        rows.append(
            [
                f"`{name}`",
                speed_note(doc),
                commit(doc),
                f"{_s(proc['second']['median_s'])}"
                f" ({'met' if goals['second_process_met'] else 'not met'})",
                f"{ip['warm_new_size_over_forward']:.2f}"
                f" ({'met' if goals['warm_new_size_met'] else 'not met'})",
                f"{b['queries']} queries: {_s(b['warm_s'])}",
            ]
        )
    for name, doc in host_runs(results, "bench_local_cpu"):
        r = doc["results"][0]
        frac = r["describe_fraction_of_encode"]
        rows.append(
            [
                f"`{name}`",
                speed_note(doc),
                commit(doc),
                "",
                "",
                f"local descriptors: describer at {100 * frac:.0f}% of encode"
                f" ({'met' if frac >= 0.8 else 'not met'}; target 80%)",
            ]
        )
    header = [
        "run", "machine", "code", "second query process (goal 3 s)",
        "warm new-size query / one forward pass (goal 2)", "batch / local",
    ]  # fmt: skip
    return table(header, rows)
