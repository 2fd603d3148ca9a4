"""README "Data": the patch sets' statistics and the embedded photos (patchsets_default,
patchsets_oxford)."""

from __future__ import annotations

from .core import cpu, load, meta, para, renderer, table, thousands

SETS = {"default": "patchsets_default", "oxford": "patchsets_oxford"}
COMMANDS = {
    "default": "`ckn patches --default --out default.npz`",
    "oxford": "`ckn patches --sequences ../shared/data/oxford_affine --out oxford.npz`",
}


def _split(stats: dict, split: str, *, names: bool) -> str:
    s = stats["splits"][split]
    scenes = [k for k, v in stats["scenes"].items() if v["split"] == split]
    what = ", ".join(scenes) if names else f"{s['scenes']} photos"
    return f"{thousands(s['patches'])} ({what})"


@renderer("patchsets_table")
def patchsets_table(results) -> str:
    """Build time, sizes, groups and NCC of the two patch sets."""
    docs = {k: results[v] for k, v in SETS.items()}
    stats = {k: d["results"] for k, d in docs.items()}

    def build(doc):
        m = meta(doc)
        cached = " (from the cache)" if m.get("from_cache") else ""
        return f"{m['build_seconds']:.0f} s{cached} on {cpu(doc)}, {load(doc)}"

    def group(s):
        g = s["group_size"]
        return f"mean {g['mean']:.2f}, {g['min']}-{g['max']}"

    rows = [
        ["command", *COMMANDS.values()],
        ["build time", *(build(d) for d in docs.values())],
        *[
            [
                "patches / groups",
                *(f"{thousands(s['patches'])} / {thousands(s['groups'])}" for s in stats.values()),
            ],
            ["group size", *(group(s) for s in stats.values())],
            [
                "train / test patches",
                *(
                    f"{_split(s, 'train', names=k == 'oxford')} / "
                    f"{_split(s, 'test', names=k == 'oxford')}"
                    for k, s in stats.items()
                ),
            ],
            [
                "mean NCC: same group vs random pairs",
                *(f"{s['ncc_intra']:.3f} vs {s['ncc_random']:.3f}" for s in stats.values()),
            ],
        ],
    ]
    header = ["", "embedded default", "`../shared/data/oxford_affine` (8 sequences)"]
    return table(header, rows)


@renderer("patchsets_scenes")
def patchsets_scenes(results) -> str:
    """Patches per scene of the two patch sets."""
    parts = []
    for label, stem in (("default", SETS["default"]), ("Oxford", SETS["oxford"])):
        scenes = results[stem]["results"]["scenes"]
        side = [
            ", ".join(f"{k} {v['patches']}" for k, v in scenes.items() if v["split"] == split)
            for split in ("train", "test")
        ]
        parts.append(f"{label}: {side[0]} | {side[1]}")
    return para(
        f"Per scene (patches, train | test): {'; '.join(parts)}. Full statistics:"
        " `benchmarks/results/patchsets_default.json`, `patchsets_oxford.json`; a few groups side"
        " by side: `benchmarks/results/contact_sheet_default.png`, `contact_sheet_oxford.png`."
    )


#: What the photo list says beside a scene's name.
PHOTO_NOTES = {"stereo_motorcycle": "stereo_motorcycle (left)"}


@renderer("default_photos")
def default_photos(results) -> str:
    """The scikit-image photos of the embedded default data, by split."""
    scenes = results[SETS["default"]]["results"]["scenes"]
    side = {
        split: ", ".join(PHOTO_NOTES.get(k, k) for k, v in scenes.items() if v["split"] == split)
        for split in ("train", "test")
    }
    return para(
        f"The embedded default uses {len(scenes)} photos shipped inside scikit-image (a"
        f" dependency): train {side['train']}; test {side['test']}."
    )
