"""TFDS builder of semantic-segmentation tiles (``rs_segmentation``: Potsdam, Vaihingen, LoveDA,
DeepGlobe, NYC 4-band) from local image + mask files; see the builder module."""

from tfds_builders.rs_segmentation.rs_segmentation_dataset_builder import (
    Builder,
    SegmentationConfig,
    decode_colour_mask,
)

__all__ = ["Builder", "SegmentationConfig", "decode_colour_mask"]
