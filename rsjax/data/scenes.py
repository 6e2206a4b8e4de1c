"""Splits cut by scene at run time: ``data.test_scenes`` / ``data.val_scenes``.

A *scene* is the group id the data gives its records (``scene_id``): an OSCD city, a Dubai tile, a
LEVIR-CD source tile. Where the records of one scene are neighbouring parts of one area, a split by
record leaks (a test crop's neighbour is in training), and where there are only a handful of
scenes, which of them to hold out is a choice of the experiment (cross-validation folds over the
six OSCD cities), not of a build. So any split that :func:`rsjax.data.pipeline.read_split` reads
can be cut by scene, with one rule, written here once:

* ``test``: the scenes of ``data.test_scenes``; ``validation``: those of ``data.val_scenes``;
* ``train``: every other scene;

all taken from the records of the *scene source*: the stored ``train`` split of a TFDS dataset
(``SOURCE_SPLIT``), or every tile of a tile folder (``data.folder``; scene = tile number, ``Tile 3``
-> 3), which has no stored splits and is always cut this way. A TFDS split that no key cuts (no
scene held out at all, or ``test`` while only ``val_scenes`` is set) is read as stored. Errors
(ConfigError, before anything is read): an id the scene source lacks (naming the key and the
scenes it has), an id held out twice, a split cut to nothing.
"""

from __future__ import annotations

from typing import Sequence

from rsjax.errors import ConfigError

# run-time split -> the config.data key holding its scenes (``train`` = every other scene).
KEYS = {"test": "test_scenes", "validation": "val_scenes"}
# The stored TFDS split the scenes of every cut split come from.
SOURCE_SPLIT = "train"


def held_out(cfg_data) -> dict[str, list[int]]:
    """``{split: scene ids}`` of :data:`KEYS` (empty keys included). ConfigError naming the key for
    an id that is not an integer, or for an id held out as test and validation at once."""
    out = {}
    for split, key in KEYS.items():
        try:
            out[split] = [int(s) for s in cfg_data[key]]
        except (TypeError, ValueError):
            raise ConfigError(
                f"config.data.{key}={cfg_data[key]!r}: expected scene ids (integers: the records' "
                f"scene_id, e.g. the tile number), e.g. (3, 8)"
            ) from None
    both = sorted(set(out["test"]) & set(out["validation"]))
    if both:
        raise ConfigError(f"config.data.test_scenes and config.data.val_scenes both hold scene {both[0]}")
    return out


def cuts(cfg_data, split: str) -> bool:
    """Whether ``split`` of a TFDS dataset is cut by scene from :data:`SOURCE_SPLIT`: ``train`` when
    any scene is held out, ``test`` / ``validation`` when their key holds scenes."""
    held = held_out(cfg_data)
    if split == SOURCE_SPLIT:
        return any(held.values())
    return bool(held.get(split))


def select(cfg_data, split: str, available: Sequence[int], *, where: str, split_key: str) -> list[int]:
    """The sorted scene ids of run-time split ``split`` (``train`` | ``test`` | ``validation``) out
    of ``available`` (the scene source's; ``where`` names it in errors, ``split_key`` is the config
    key that chose ``split``).

    Raises:
      ConfigError: a held-out id not in ``available``, an id held out twice, an unknown split, or
        a split without scenes.
    """
    held = held_out(cfg_data)
    have = sorted({int(s) for s in available})
    for s_name, key in KEYS.items():
        unknown = [s for s in held[s_name] if s not in have]
        if unknown:
            raise ConfigError(
                f"config.data.{key}={tuple(cfg_data[key])}: no scene {unknown[0]} in {where} "
                f"(its scenes: {', '.join(map(str, have))})"
            )
    rule = {
        "train": "every scene not in data.test_scenes / data.val_scenes",
        "test": "data.test_scenes",
        "validation": "data.val_scenes",
    }
    if split not in rule:
        raise ConfigError(
            f"config.{split_key}={split!r}: splits cut by scene are " + "; ".join(f"{k} ({v})" for k, v in rule.items())
        )
    out = held[split] if split in held else [s for s in have if s not in held["test"] + held["validation"]]
    if not out:
        raise ConfigError(
            f"config.{split_key}={split!r}: no scene of {where} is in it ({rule[split]}; its "
            f"scenes: {', '.join(map(str, have))})"
        )
    return sorted(out)
