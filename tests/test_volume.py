"""Volume propagation with a stand-in predictor that answers every prompt with the true
cross-section of a synthetic object: the propagation logic is tested exactly, without a model."""

import threading

import numpy as np
import pytest
import torch

from mobilesam import Cancelled, EmbeddingState
from mobilesam.volume import (
    PROJECTIONS,
    SlicePrompt,
    VolumeEmbeddings,
    propagate_object,
    segment_objects,
)

INTENSITY_STEP = 60  # object k is drawn with intensity 60 * k, so the image encodes its labels
LOW_RES = 256


class OraclePredictor:
    """SamPredictor stand-in: "encodes" a slice by reading the object labels out of its intensities,
    and answers a prompt with the full cross-section of the object the prompt points at (positive
    points: the object under them; box: the object with most pixels in the box; mask input: the
    object with most pixels under the mask)."""

    def __init__(self):
        self.encoder_calls = 0
        self.labels = None
        self.prompts = []

    def set_image(self, image):
        self.encoder_calls += 1
        self.labels = (image[..., 0].astype(np.int64) + INTENSITY_STEP // 2) // INTENSITY_STEP

    def get_embedding_state(self):
        h, w = self.labels.shape
        return EmbeddingState(torch.from_numpy(self.labels.copy())[None, None], (h, w), (h, w))

    def set_embedding(self, state):
        self.labels = state.features[0, 0].numpy()

    def predict(
        self,
        point_coords=None,
        point_labels=None,
        box=None,
        mask_input=None,
        multimask_output=True,
        return_logits=False,
    ):
        self.prompts.append((point_coords, point_labels, box, mask_input))
        chosen = self._choose(point_coords, point_labels, box, mask_input)
        mask = (self.labels == chosen) if chosen else np.zeros(self.labels.shape, bool)
        n = 3 if multimask_output else 1
        logits = np.where(mask, 10.0, -10.0).astype(np.float32)
        out = logits if return_logits else mask
        return (
            np.repeat(out[None], n, 0),
            np.full(n, 0.9, np.float32),
            np.repeat(to_low_res(logits)[None], n, 0),
        )

    def _choose(self, points, labels, box, mask_input):
        votes = []
        if points is not None:
            for (x, y), label in zip(points, labels):
                if label == 1:
                    votes.append(self.labels[int(y), int(x)])
        if box is not None:
            x0, y0, x1, y1 = (int(round(v)) for v in box)
            votes.extend(self.labels[y0:y1, x0:x1].ravel())
        if mask_input is not None:
            votes.extend(self.labels[from_low_res(mask_input[0], self.labels.shape) > 0])
        votes = [v for v in votes if v > 0]
        return int(np.bincount(votes).argmax()) if votes else 0


def _low_res_grid(shape):
    h, w = shape
    scale = LOW_RES / max(h, w)
    return int(h * scale + 0.5), int(w * scale + 0.5), scale


def to_low_res(image):
    """(H, W) -> (256, 256) in SAM's low-res frame (longest side scaled to 256, zero padded)."""
    nh, nw, scale = _low_res_grid(image.shape)
    rows = np.minimum((np.arange(nh) / scale).astype(int), image.shape[0] - 1)
    cols = np.minimum((np.arange(nw) / scale).astype(int), image.shape[1] - 1)
    out = np.full((LOW_RES, LOW_RES), -10.0, np.float32)
    out[:nh, :nw] = image[np.ix_(rows, cols)]
    return out


def from_low_res(low_res, shape):
    _, _, scale = _low_res_grid(shape)
    rows = (np.arange(shape[0]) * scale).astype(int)
    cols = (np.arange(shape[1]) * scale).astype(int)
    return low_res[np.ix_(rows, cols)]


def ellipsoid(shape, center, radii):
    zz, yy, xx = np.ogrid[: shape[0], : shape[1], : shape[2]]
    return sum(((g - c) / r) ** 2 for g, c, r in zip((zz, yy, xx), center, radii)) <= 1.0


def render(*objects):
    """uint8 volume with object k (1-based) at intensity 60 * k; later objects win on overlap."""
    volume = np.zeros(objects[0].shape, np.uint8)
    for k, obj in enumerate(objects, start=1):
        volume[obj] = INTENSITY_STEP * k
    return volume


def dice(a, b):
    return 2 * np.count_nonzero(a & b) / (np.count_nonzero(a) + np.count_nonzero(b))


def interior_point(mask2d):
    ys, xs = np.nonzero(mask2d)
    i = np.argmin((ys - ys.mean()) ** 2 + (xs - xs.mean()) ** 2)
    return np.array([[xs[i], ys[i]]], dtype=float)


SHAPE = (32, 64, 64)
BALL = ellipsoid(SHAPE, (15, 30, 34), (9.5, 16, 12))


def tube(shape=SHAPE, z_range=(3, 29), radius=6.0, start=(32, 14), drift=(0.3, 1.2)):
    zz, yy, xx = np.ogrid[: shape[0], : shape[1], : shape[2]]
    cy = start[0] + drift[0] * (zz - z_range[0])
    cx = start[1] + drift[1] * (zz - z_range[0])
    inside = (yy - cy) ** 2 + (xx - cx) ** 2 <= radius**2
    return inside & (zz >= z_range[0]) & (zz < z_range[1])


@pytest.mark.parametrize("projection", PROJECTIONS)
def test_ellipsoid_from_one_point_every_projection(projection):
    embeddings = VolumeEmbeddings(render(BALL), OraclePredictor())
    result = propagate_object(
        embeddings, [SlicePrompt(15, points=interior_point(BALL[15]))], projection=projection
    )
    assert result.shape == SHAPE and result.dtype == bool
    assert dice(result, BALL) >= 0.95
    outside = ~BALL.any(axis=(1, 2))
    assert not result[outside].any(), "propagation went past the ends of the object"


def test_drifting_tube_from_a_box_stops_where_it_ends():
    obj = tube()
    ys, xs = np.nonzero(obj[20])
    box = (xs.min(), ys.min(), xs.max() + 1, ys.max() + 1)
    predictor = OraclePredictor()
    result = propagate_object(VolumeEmbeddings(render(obj), predictor), [SlicePrompt(20, box=box)])
    assert dice(result, obj) >= 0.95
    present = np.flatnonzero(result.any(axis=(1, 2)))
    assert (present.min(), present.max()) == (3, 28)
    # Each slice needed is encoded once: 26 object slices + the two empty slices that stop it.
    assert predictor.encoder_calls == 28


def test_stops_when_next_slice_holds_another_object():
    """A second object continues right where the first ends, partly under its box: the IoU test stops."""
    first = ellipsoid(SHAPE, (8, 30, 30), (6.5, 12, 12))
    second = ellipsoid(SHAPE, (22, 36, 40), (7.5, 14, 14)) & (np.arange(32)[:, None, None] >= 15)
    result = propagate_object(
        VolumeEmbeddings(render(first, second), OraclePredictor()),
        [SlicePrompt(8, points=interior_point(first[8]))],
    )
    assert dice(result, first) >= 0.95
    assert not (result & second).any()


def test_two_touching_objects_no_overlaps_and_embeddings_shared():
    left = ellipsoid(SHAPE, (15, 32, 20), (10.5, 14, 10))
    right = ellipsoid(SHAPE, (14, 32, 43), (9.5, 13, 13)) & ~left
    assert (np.abs(np.diff((left.astype(int) - right.astype(int)), axis=2)) == 2).any(), "objects must touch"
    predictor = OraclePredictor()
    embeddings = VolumeEmbeddings(render(left, right), predictor, max_in_memory=2)
    labels = segment_objects(
        embeddings,
        [
            [SlicePrompt(15, points=interior_point(left[15]))],
            [SlicePrompt(14, points=interior_point(right[14]))],
        ],
    )
    assert labels.dtype == np.int32 and set(np.unique(labels)) == {0, 1, 2}
    assert (labels[left] == 1).mean() >= 0.95 and (labels[right] == 2).mean() >= 0.95
    assert not ((labels == 1) & right).any() and not ((labels == 2) & left).any()
    # Slice-major propagation: each slice encoded once for both objects (2 slots of LRU suffice
    # here because both sweeps move away from the prompted slices).
    assert predictor.encoder_calls <= 32


class GreedyOracle(OraclePredictor):
    """Answers with the object dilated by 3 pixels, so neighbours' masks overlap; the logit
    decreases away from the object, as a real model's would."""

    def predict(self, *args, **kwargs):
        from scipy import ndimage

        masks, scores, low_res = super().predict(*args, **{**kwargs, "return_logits": False})
        distance = ndimage.distance_transform_edt(~masks[0])
        logits = np.where(distance <= 3, 10.0 - distance, -10.0).astype(np.float32)
        return np.repeat(logits[None], len(masks), 0), scores, low_res


def test_overlapping_answers_split_by_logit():
    left = ellipsoid(SHAPE, (15, 32, 20), (6.5, 12, 10))
    right = ellipsoid(SHAPE, (15, 32, 43), (6.5, 12, 12)) & ~left
    labels = segment_objects(
        VolumeEmbeddings(render(left, right), GreedyOracle()),
        [
            [SlicePrompt(15, points=interior_point(left[15]))],
            [SlicePrompt(15, points=interior_point(right[15]))],
        ],
    )
    # The greedy neighbour never takes an object's pixels; each object is still found whole
    # (apart from its tips, where the dilated answer's box reaches the other object).
    assert not (labels[left] == 2).any() and not (labels[right] == 1).any()
    assert (labels[15][left[15]] == 1).all() and (labels[15][right[15]] == 2).all()
    assert (labels[left] == 1).mean() >= 0.95 and (labels[right] == 2).mean() >= 0.95


def test_two_prompted_slices_fill_the_gap_from_both_ends():
    """An object whose cross-section jumps between z=9 and z=10: one prompt reaches only its side
    of the jump; prompts on both sides fill the whole object."""
    zz = np.arange(SHAPE[0])[:, None, None]
    low = ellipsoid(SHAPE, (0, 20, 20), (40, 9, 9)) & (zz >= 2) & (zz < 10)
    high = ellipsoid(SHAPE, (0, 42, 44), (40, 9, 9)) & (zz >= 10) & (zz < 22)
    obj = low | high
    volume = render(obj)
    one = propagate_object(VolumeEmbeddings(volume, OraclePredictor()), [SlicePrompt(4, points=[[20, 20]])])
    assert dice(one, low) >= 0.95
    both = propagate_object(
        VolumeEmbeddings(volume, OraclePredictor()),
        [SlicePrompt(4, points=[[20, 20]]), SlicePrompt(18, points=[[44, 42]])],
    )
    assert dice(both, obj) >= 0.95


@pytest.mark.parametrize("axis", [1, 2])
def test_propagation_along_other_axes(axis):
    volume = np.moveaxis(render(BALL), 0, axis)  # the object's long axis now lies along `axis`
    truth = np.moveaxis(BALL, 0, axis)
    embeddings = VolumeEmbeddings(volume, OraclePredictor(), axis=axis)
    assert embeddings.num_slices == 32 and embeddings.slice_shape == (64, 64)
    result = propagate_object(embeddings, [SlicePrompt(15, points=interior_point(BALL[15]))])
    assert result.shape == volume.shape
    assert dice(result, truth) >= 0.95


def test_channel_volume_and_channel_axis():
    gray = render(BALL)
    volume = np.stack([gray, gray // 2], axis=1)  # (Z, C, Y, X)
    embeddings = VolumeEmbeddings(volume, OraclePredictor(), channel_axis=1)
    assert embeddings.slice_shape == (64, 64) and embeddings.spatial_shape == SHAPE
    assert embeddings.slice_image(15).shape == (64, 64, 3)
    result = propagate_object(embeddings, [SlicePrompt(15, points=interior_point(BALL[15]))])
    assert dice(result, BALL) >= 0.95


def test_progress_and_cancel():
    embeddings = VolumeEmbeddings(render(BALL), OraclePredictor())
    calls = []
    propagate_object(
        embeddings,
        [SlicePrompt(15, points=interior_point(BALL[15]))],
        progress=lambda done, total: calls.append((done, total)),
    )
    assert calls[-1][0] == calls[-1][1] == 32
    assert [d for d, _ in calls] == sorted(d for d, _ in calls)

    cancel = threading.Event()

    def cancel_after_five(done, total):
        if done == 5:
            cancel.set()

    with pytest.raises(Cancelled):
        propagate_object(
            embeddings,
            [SlicePrompt(15, points=interior_point(BALL[15]))],
            progress=cancel_after_five,
            cancel=cancel,
        )
    cancel.clear()
    with pytest.raises(Cancelled):
        embeddings.embed_all(progress=cancel_after_five, cancel=cancel)


def test_prompt_validation_errors_name_the_problem():
    embeddings = VolumeEmbeddings(render(BALL), OraclePredictor())
    with pytest.raises(ValueError, match=r"z=40 is outside the volume \(slices 0..31\)"):
        propagate_object(embeddings, [SlicePrompt(40, points=[[5, 5]])])
    with pytest.raises(ValueError, match=r"point \(70, 5\) on slice z=3 is outside the 64x64"):
        propagate_object(embeddings, [SlicePrompt(3, points=[[70, 5]])])
    with pytest.raises(ValueError, match="does not overlap"):
        propagate_object(embeddings, [SlicePrompt(3, box=[100, 100, 120, 120])])
    with pytest.raises(ValueError, match="needs points or a box"):
        SlicePrompt(3)
    with pytest.raises(ValueError, match="labels must be 1"):
        SlicePrompt(3, points=[[1, 1]], labels=[2])
    with pytest.raises(ValueError, match="only background points"):
        SlicePrompt(3, points=[[1, 1]], labels=[0])
    with pytest.raises(ValueError, match="projection must be one of"):
        propagate_object(embeddings, [SlicePrompt(3, points=[[1, 1]])], projection="lasso")
    with pytest.raises(ValueError, match="object 2 has no prompts"):
        segment_objects(embeddings, [[SlicePrompt(3, points=[[1, 1]])], []])
    with pytest.raises(IndexError, match="slice 32 is outside the volume"):
        embeddings.get(32)
    with pytest.raises(ValueError, match=r"\(Z, Y, X\)"):
        VolumeEmbeddings(np.zeros((4, 4)), OraclePredictor())


class LazyVolume:
    """A memmapped volume that records which slices are read and refuses to be loaded whole."""

    def __init__(self, data):
        self.data, self.shape, self.dtype, self.reads = data, data.shape, data.dtype, []

    def __getitem__(self, index):
        z = index[0]
        assert isinstance(z, int), f"only single slices may be read, got {index}"
        self.reads.append(z)
        return self.data[index]

    def __array__(self, *args, **kwargs):
        raise AssertionError("the whole volume was loaded into memory")


def test_memory_bounded_on_a_200_slice_memmap(tmp_path):
    shape = (200, 48, 48)
    data = np.lib.format.open_memmap(tmp_path / "vol.npy", mode="w+", dtype=np.uint16, shape=shape)
    obj = tube(shape, z_range=(5, 195), radius=7, start=(24, 10), drift=(0.0, 0.13))
    for z in range(shape[0]):
        data[z] = np.where(obj[z], 20000, 300)  # uint16: intensities normalised once per volume
    data.flush()
    volume = LazyVolume(np.load(tmp_path / "vol.npy", mmap_mode="r"))
    predictor = OraclePredictor()
    embeddings = VolumeEmbeddings(volume, predictor, max_in_memory=4)
    assert len(volume.reads) <= 16, "intensity range must come from a sample of slices"
    seen_sizes = []
    result = propagate_object(
        embeddings,
        [SlicePrompt(100, points=interior_point(obj[100]))],
        progress=lambda d, t: seen_sizes.append(len(embeddings.in_memory)),
    )
    assert dice(result, obj) >= 0.95
    assert max(seen_sizes) <= 4
    assert predictor.encoder_calls == 192  # 190 object slices + one empty slice at each end
