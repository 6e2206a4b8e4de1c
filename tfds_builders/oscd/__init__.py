"""TFDS builder of OSCD (Onera Satellite Change Detection, ``oscd``) from local GeoTIFFs; see
the builder module."""

from tfds_builders.oscd.oscd_dataset_builder import Builder, OSCDConfig

__all__ = ["Builder", "OSCDConfig"]
