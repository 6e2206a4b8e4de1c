"""Export trained rsjax encoders to PyTorch state dicts (torchvision / timm / smp naming).

Importing this package does not import torch; only writing/reading torch files does.
CLI: ``python -m rsjax.export --workdir=RUN [--step=N] --out=encoder.pt --format=torchvision|timm|smp``.
"""

from rsjax.export.torch_export import (
    FORMATS,
    data_metadata,
    export_encoder,
    flax_to_torch_state,
    load_state_dict,
    save_encoder,
    sidecar_path,
    timm_overlay,
    torch_name_table,
)

__all__ = [
    "FORMATS",
    "data_metadata",
    "export_encoder",
    "flax_to_torch_state",
    "load_state_dict",
    "save_encoder",
    "sidecar_path",
    "timm_overlay",
    "torch_name_table",
]
