"""ImageNet CNN backbones and a trained CKN as a backbone (stage: image -> conv feature map).

:func:`load_backbone` reads a weights file without torch (:func:`read_state_dict`:
PyTorch legacy or zip, .npz, .safetensors) and returns a :class:`Backbone`
(EfficientNet-Lite0, VGG16, ResNet-50 / 101) or a :class:`CknBackbone`;
:func:`state_dict_shapes` lists the keys and shapes a weights file must hold.
"""

from __future__ import annotations

from retrieval._src.nets.backbone import (
    BACKBONE_NAMES,
    BACKBONES,
    Backbone,
    load_backbone,
    state_dict_shapes,
)
from retrieval._src.nets.ckn_backbone import (
    CknBackbone,
)
from retrieval._src.nets.weights import (
    read_state_dict,
    write_state_dict,
)

__all__ = [
    "BACKBONES",
    "BACKBONE_NAMES",
    "Backbone",
    "CknBackbone",
    "load_backbone",
    "read_state_dict",
    "state_dict_shapes",
    "write_state_dict",
]
