"""TFDS builder of LEVIR-CD building change detection (``levir_cd``) from local PNGs; see the
builder module."""

from tfds_builders.levir_cd.levir_cd_dataset_builder import Builder, LevirCDConfig

__all__ = ["Builder", "LevirCDConfig"]
