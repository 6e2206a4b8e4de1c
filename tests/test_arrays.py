"""rsjax.data.arrays.ArrayIterator, the input of every supervised task: batch s is a pure
function of (seed, s), paired arrays get the same crop / flip / rotation, resume draws the
batches of an uninterrupted run, and a resume on other training data is refused."""

from __future__ import annotations

import json

import numpy as np
import pytest

from rsjax import errors
from rsjax.data.arrays import ArrayIterator


def _arrays(n=10, size=8, offset=0):
    # image channel 0 = the mask, so a paired crop / flip / rotation keeps them equal
    mask = (np.arange(n * size * size).reshape(n, size, size) + offset) % 251
    image = np.stack([mask, -mask], -1).astype(np.float32)
    return {"image": image, "mask": mask.astype(np.int32), "label": np.arange(n)}


def _take(it, k):
    return [next(it) for _ in range(k)]


def test_epochs_cover_every_example_and_paired_arrays_move_together():
    it = ArrayIterator(_arrays(), batch_size=5, seed=3, crop=4)
    batches = _take(it, 4)  # two epochs of 10 examples
    for b in batches:
        assert b["image"].shape == (5, 4, 4, 2) and b["mask"].shape == (5, 4, 4)
        np.testing.assert_array_equal(b["image"][..., 0], b["mask"])  # same window, flip, rotation
    for epoch in (batches[:2], batches[2:]):
        assert sorted(np.concatenate([b["label"] for b in epoch]).tolist()) == list(range(10))
    # the crop is a window of the labelled example
    full = _arrays()["mask"]
    for b in batches:
        for lab, m in zip(b["label"], b["mask"]):
            assert set(m.ravel().tolist()) <= set(full[lab].ravel().tolist())


def test_resume_draws_the_batches_of_an_uninterrupted_run():
    a = ArrayIterator(_arrays(), batch_size=4, seed=7, crop=6)
    ref = _take(a, 6)
    b = ArrayIterator(_arrays(), batch_size=4, seed=7, crop=6)
    _take(b, 2)
    state = b.get_state()
    c = ArrayIterator(_arrays(), batch_size=4, seed=7, crop=6)
    c.set_state(state)
    for x, y in zip(_take(c, 4), ref[2:]):
        for k in x:
            np.testing.assert_array_equal(x[k], y[k])
    other_seed = _take(ArrayIterator(_arrays(), batch_size=4, seed=8, crop=6), 1)[0]
    assert not np.array_equal(other_seed["label"], ref[0]["label"]) or not np.array_equal(
        other_seed["mask"], ref[0]["mask"]
    )


def test_resume_on_other_training_data_is_refused():
    state = ArrayIterator(_arrays(), batch_size=4, seed=0).get_state()
    with pytest.raises(errors.CheckpointError, match=r"num_examples 10 there, 8 now \(the fine-tune's"):
        ArrayIterator(_arrays(n=8), batch_size=4, seed=0, source="the fine-tune's images").set_state(state)
    # the same number of examples, other content (another labelled subset): the fingerprint
    with pytest.raises(errors.CheckpointError, match="fingerprint"):
        ArrayIterator(_arrays(offset=1), batch_size=4, seed=0).set_state(state)
    with pytest.raises(errors.CheckpointError, match="batch_size 4 there, 2 now"):
        ArrayIterator(_arrays(), batch_size=2, seed=0).set_state(state)
    # a state written before the fingerprint existed still resumes
    old = json.loads(state)
    del old["fingerprint"]
    it = ArrayIterator(_arrays(), batch_size=4, seed=0)
    it.set_state(json.dumps(old))
    assert it.step == 0
