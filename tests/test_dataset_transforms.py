"""Letterbox, normalisation and the training augmentation (docs/protocol.md, "Transforms and the letterbox")."""

import numpy as np
import pytest
import torch

from dataset import DatasetError, EpisodeSpec, build_dataset
from synthetic import write_synthetic_youtube_vis
from helpers import reference_case
from dataset.transforms import (IMAGENET_MEAN, IMAGENET_STD, TestTransform, TrainTransform,
                                letterbox_geometry, letterbox_mask)

OUT = (64, 112)


def unnormalise(images: torch.Tensor) -> np.ndarray:
    """[T,3,H,W] normalised -> [T,H,W,3] in 0..255 (float)."""
    x = images.permute(0, 2, 3, 1).numpy()
    return (x * IMAGENET_STD + IMAGENET_MEAN) * 255.0


def white_object_frames(count, height, width, rng):
    """Frames whose image is white exactly where the mask is 1 (black elsewhere)."""
    frames, masks = [], []
    for _ in range(count):
        mask = np.zeros((height, width), np.uint8)
        y, x = rng.integers(5, height // 2), rng.integers(5, width // 2)
        mask[y:y + height // 3, x:x + width // 3] = 1
        frames.append(np.repeat(mask[:, :, None] * 255, 3, axis=2).astype(np.uint8))
        masks.append(mask)
    return frames, masks


def test_letterbox_geometry_by_hand():
    # f = min(240/100, 424/200) = 2.12 -> 212 x 424, offset ((240-212)//2, 0)
    assert letterbox_geometry(100, 200, 240, 424) == (212, 424, 14, 0)
    # f = min(240/720, 424/1280) = 0.33125 -> 238 x 424, offset (1, 0)
    assert letterbox_geometry(720, 1280, 240, 424) == (238, 424, 1, 0)
    # portrait 200 x 100: f = min(1.2, 4.24) = 1.2 -> 240 x 120, offset (0, 152)
    assert letterbox_geometry(200, 100, 240, 424) == (240, 120, 0, 152)


def test_letterbox_mask_loses_a_rim_by_truncation():
    mask = np.zeros((20, 40), np.uint8)
    mask[5:15, 10:30] = 1
    out = letterbox_mask(mask, (40, 80))          # scale 2, no padding
    nearest = np.kron(mask, np.ones((2, 2), np.uint8))
    assert out.dtype == np.uint8 and set(np.unique(out)) <= {0, 1}
    assert np.all(out <= nearest)                 # never grows
    assert out.sum() < nearest.sum()              # the bilinear rim is truncated away
    assert out[12:28, 22:58].all()                # the inside stays object
    full = letterbox_mask(np.ones((10, 40), np.uint8), (40, 80))   # 20 x 80 band, offset 10
    assert full[10:30].all() and full[:10].sum() == 0 and full[30:].sum() == 0


def test_test_transform_values_and_shapes():
    frame = np.full((50, 100, 3), 124, np.uint8)
    mask = np.zeros((50, 100), np.uint8)
    mask[10:40, 20:80] = 1
    images, masks = TestTransform(OUT)([frame, frame], [mask, mask])
    assert images.shape == (2, 3, *OUT) and images.dtype == torch.float32
    assert masks.shape == (2, 1, *OUT) and masks.dtype == torch.float32
    # 50x100 into 64x112: f = min(1.28, 1.12) = 1.12 -> 56 x 112, offset (4, 0)
    expected_inside = (124 / 255.0 - IMAGENET_MEAN) / IMAGENET_STD
    np.testing.assert_allclose(images[0, :, 30, 50].numpy(), expected_inside, rtol=1e-5)
    np.testing.assert_allclose(images[0, :, 0, 50].numpy(), -IMAGENET_MEAN / IMAGENET_STD, rtol=1e-5)
    assert masks[:, :, :4].sum() == 0 and masks[:, :, 60:].sum() == 0
    assert set(masks.unique().tolist()) == {0.0, 1.0}


def test_train_transform_keeps_images_and_masks_aligned():
    rng = np.random.default_rng(0)
    transform = TrainTransform(OUT)
    for trial in range(6):
        frames, masks = white_object_frames(5, 72, 128, rng)
        images, out_masks = transform(frames, masks, np.random.default_rng(trial))
        assert images.shape == (5, 3, *OUT) and out_masks.shape == (5, 1, *OUT)
        brightness = unnormalise(images).mean(axis=3)
        for t in range(5):
            white = brightness[t] > 127
            mask = out_masks[t, 0].numpy() > 0.5
            intersection = np.logical_and(white, mask).sum()
            union = np.logical_or(white, mask).sum()
            assert mask.sum() > 0 and intersection / union > 0.85, (trial, t, intersection / union)


def test_train_transform_first_frame_is_not_warped():
    frames, masks = white_object_frames(1, 72, 128, np.random.default_rng(1))
    frames, masks = frames * 4, masks * 4
    plain_mask = TestTransform(OUT)(frames[:1], masks[:1])[1][0, 0]
    warped_any = False
    for seed in range(4):
        _, out = TrainTransform(OUT)(frames, masks, np.random.default_rng(seed))
        first = out[0, 0]
        assert torch.equal(first, plain_mask) or torch.equal(first, plain_mask.flip(-1))
        warped_any |= not (torch.equal(out[1, 0], first))
    assert warped_any


def test_train_transform_transposes_portrait_lists():
    # portrait 128 x 72 frame, object in the bottom-left corner: after the transpose it lies in
    # the top rows (a horizontal flip cannot move it between top and bottom)
    mask = np.zeros((128, 72), np.uint8)
    mask[96:120, 4:30] = 1
    frame = np.repeat(mask[:, :, None] * 255, 3, axis=2).astype(np.uint8)
    for seed in range(3):
        _, out = TrainTransform(OUT)([frame], [mask], np.random.default_rng(seed))
        rows = np.flatnonzero(out[0, 0].numpy().any(axis=1))
        assert rows.max() < OUT[0] // 2
    _, plain = TestTransform(OUT)([frame], [mask])
    rows = np.flatnonzero(plain[0, 0].numpy().any(axis=1))
    assert rows.min() > OUT[0] // 2


def test_train_transform_is_a_function_of_its_generator():
    frames, masks = white_object_frames(4, 72, 128, np.random.default_rng(2))
    a = TrainTransform(OUT)(frames, masks, np.random.default_rng(5))
    b = TrainTransform(OUT)(frames, masks, np.random.default_rng(5))
    c = TrainTransform(OUT)(frames, masks, np.random.default_rng(6))
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
    assert not torch.equal(a[0], c[0])


def test_contrast_and_noise_are_shared_by_the_list():
    # a uniform grey list, no object: after undoing the normalisation every pixel of every
    # frame inside the frame area has the same value 124 * contrast + noise
    frame = np.full((64, 112, 3), 124, np.uint8)
    mask = np.zeros((64, 112), np.uint8)
    images, _ = TrainTransform(OUT)([frame] * 3, [mask] * 3, np.random.default_rng(9))
    values = unnormalise(images)[:, 20:44, 40:72]
    assert np.ptp(values) < 1e-3
    assert 124 * 0.97 - 5 - 1e-3 <= values.mean() <= 124 * 1.03 + 5 + 1e-3


def test_transform_rejects_mismatched_inputs():
    with pytest.raises(DatasetError, match="same size"):
        TestTransform(OUT)([np.zeros((10, 20, 3), np.uint8)], [np.zeros((10, 21), np.uint8)])
    with pytest.raises(DatasetError, match="multiple of 8"):
        TestTransform((63, 112))


# ---------------------------------------------------------------- the list's first frame sets the letterbox
PADDING = -IMAGENET_MEAN / IMAGENET_STD


def mixed_sizes_case():
    with np.load(f"{reference_case.GOLDEN_DIR}/transform_test_mixed_sizes.npz") as data:
        gold = {k: data[k] for k in data.files}
    frames = [gold[f"frames_{k}"] for k in range(4)]
    masks = [gold[f"masks_{k}"] for k in range(4)]
    return frames, masks, gold


def test_test_transform_matches_the_authors_on_mixed_sizes():
    frames, masks, gold = mixed_sizes_case()
    assert [f.shape[:2] for f in frames] == [tuple(s) for s in gold["order"]]
    images, out_masks = TestTransform((240, 424))(frames, masks)
    assert images.shape == gold["images"].shape == (4, 3, 240, 424)
    assert np.abs(images.numpy() - gold["images"]).max() <= 1e-3
    assert np.array_equal(out_masks.numpy(), gold["masks"])
    # frame 0 is 640x360: f = min(240/640, 424/360) = 0.375 -> 240 x 135 at column (424-135)//2 = 144,
    # and every frame of the list (360x640, 480x720, 300x500) is stretched into those columns
    for t in range(4):
        assert np.allclose(images[t, :, :, :144].numpy(), PADDING[:, None, None], atol=1e-6)
        assert np.allclose(images[t, :, :, 144 + 135:].numpy(), PADDING[:, None, None], atol=1e-6)
        assert out_masks[t, 0, :, :144].sum() == 0 and out_masks[t, 0, :, 279:].sum() == 0
        assert out_masks[t, 0, :, 144:279].sum() > 0


def test_letterbox_per_frame_is_opt_in_and_uses_each_frames_own_size():
    frames, masks, gold = mixed_sizes_case()
    images, out_masks = TestTransform((240, 424), letterbox_per_frame=True)(frames, masks)
    # the first frame is letterboxed the same way under both rules, the others are not
    assert np.abs(images[0].numpy() - gold["images"][0]).max() <= 1e-3
    assert np.array_equal(out_masks[0].numpy(), gold["masks"][0])
    for t in range(1, 4):
        assert np.abs(images[t].numpy() - gold["images"][t]).max() > 1.0
        assert not np.array_equal(out_masks[t].numpy(), gold["masks"][t])
        # per frame = the frame alone (a one-frame list is letterboxed with its own size)
        alone_img, alone_mask = TestTransform((240, 424))(frames[t:t + 1], masks[t:t + 1])
        assert torch.equal(images[t], alone_img[0]) and torch.equal(out_masks[t], alone_mask[0])
    # 360x640: f = min(240/360, 424/640) = 0.6625 -> 238 x 424 at row 1 (by hand)
    assert np.allclose(images[1, :, 0].numpy(), PADDING[:, None], atol=1e-6)
    assert np.allclose(images[1, :, 239].numpy(), PADDING[:, None], atol=1e-6)
    assert out_masks[1, 0, 0].sum() == 0 and out_masks[1, 0, 239].sum() == 0
    assert not np.allclose(images[1, :, 1:239, 10].numpy(), PADDING[:, None], atol=1e-6)  # full width


def test_train_transform_letterboxes_the_list_with_its_first_frame():
    # a wide first frame (40x112 -> rows 12..51 of 64x112) and a square one (64x64 on its own:
    # columns 24..87); uniform grey, so every non-padding pixel differs from the padding value
    wide = np.full((40, 112, 3), 124, np.uint8)
    square = np.full((64, 64, 3), 124, np.uint8)
    frames = [wide, square, square]
    masks = [np.zeros(f.shape[:2], np.uint8) for f in frames]
    padded = lambda x: np.isclose(x, PADDING[:, None, None], atol=1e-5).all(axis=0)   # [3,h,w] -> [h,w]
    for seed in range(3):
        authors, _ = TrainTransform(OUT)(frames, masks, np.random.default_rng(seed))
        per_frame, _ = TrainTransform(OUT, letterbox_per_frame=True)(frames, masks, np.random.default_rng(seed))
        for t in (1, 2):
            pad = padded(authors[t].numpy())
            assert pad[:12].all() and pad[52:].all() and not pad[32, 56]
            assert not pad[32, :10].any()                                  # stretched to the full width
            pad = padded(per_frame[t].numpy())
            assert pad[:, :24].all() and pad[:, 88:].all() and not pad[32, 56]
            assert not pad[:12, 56].any()                                  # its own full height
        assert torch.equal(authors[0], per_frame[0])


@pytest.mark.slow
def test_datasets_thread_the_letterbox_setting(tmp_path):
    # categories 1-8; the first 9 videos are portrait: category 2 (a training class of group 1)
    # mixes 3 portrait and 3 landscape videos
    root = write_synthetic_youtube_vis(str(tmp_path / "ytvis"), seed=2, videos_per_class=6, frames_per_video=5,
                                       frame_size=(72, 128), num_categories=8, portrait_videos=9)
    for augment in (False, True):
        authors = build_dataset("youtube_vis", root=root, split="train", group=1, spec=EpisodeSpec(image_size=OUT),
                                episodes_per_class=1, augment=augment)
        per_frame = build_dataset("youtube_vis", root=root, split="train", group=1,
                                  spec=EpisodeSpec(image_size=OUT, letterbox_per_frame=True), episodes_per_class=1,
                                  augment=augment)
        assert not authors.transform.letterbox_per_frame and per_frame.transform.letterbox_per_frame
        mixed = [i for i in range(len(authors))
                 if len({tuple(authors.load_image(v, 0).shape) for v in authors[i]["support_videos"]}) > 1]
        assert mixed, "no support set mixes frame sizes"
        for i in range(len(authors)):
            same = torch.equal(authors[i]["support_img"], per_frame[i]["support_img"])
            assert same == (i not in mixed), i


# ---------------------------------------------------------------- issue 17: cheaper default, fast_augment
def textured_frames(count, height, width, rng):
    """Noisy frames with a blob mask each (ragged edges)."""
    frames, masks = [], []
    for _ in range(count):
        frames.append(rng.integers(0, 256, (height, width, 3), dtype=np.uint8))
        yy, xx = np.mgrid[0:height, 0:width]
        cy, cx = rng.uniform(0.3, 0.7) * height, rng.uniform(0.3, 0.7) * width
        masks.append((np.hypot((yy - cy) / height, (xx - cx) / width) < rng.uniform(0.15, 0.3)).astype(np.uint8))
    return frames, masks


@pytest.mark.parametrize("size", [(61, 97), (97, 61), (360, 640)])
def test_imgaug_geometry_equals_imgaugs_own_segmentation_map_path(size):
    # the authors' call: the deterministic Sequential on image= and segmentation_maps= (imgaug's own path)
    from imgaug.augmentables.segmaps import SegmentationMapsOnImage
    from dataset.transforms import ImgaugGeometry

    frames, masks = textured_frames(3, *size, np.random.default_rng(size[0]))
    for seed in range(4):
        geometry = ImgaugGeometry(seed * 7919 + 1)
        for frame, mask in zip(frames, masks):
            image, out_mask = geometry(frame, mask)
            expected_image, segmap = geometry.sequence(image=frame, segmentation_maps=SegmentationMapsOnImage(
                mask[:, :, None], shape=frame.shape))
            assert np.array_equal(image, expected_image)
            assert np.array_equal(out_mask, segmap.get_arr()[:, :, 0]), (size, seed)


def test_fast_augment_keeps_images_and_masks_aligned_and_follows_the_default():
    from dataset.transforms import FastTrainTransform

    rng = np.random.default_rng(3)
    for trial, (height, width) in enumerate([(72, 128), (128, 72), (90, 120)]):
        frames, masks = white_object_frames(5, height, width, rng)
        images, out_masks = FastTrainTransform(OUT)(frames, masks, np.random.default_rng(trial))
        default_masks = TrainTransform(OUT)(frames, masks, np.random.default_rng(trial))[1]
        assert images.shape == (5, 3, *OUT) and out_masks.shape == (5, 1, *OUT)
        assert set(out_masks.unique().tolist()) <= {0.0, 1.0}
        brightness = unnormalise(images).mean(axis=3)
        for t in range(5):
            mask = out_masks[t, 0].numpy() > 0.5
            white = brightness[t] > 127           # (the truncated rim costs small objects up to ~0.15 in
            assert np.logical_and(white, mask).sum() / np.logical_or(white, mask).sum() > 0.8, (trial, t)  # both)
            # the same draws (transpose, crop, affine, flip) as the default: the same object, resampled once
            default = default_masks[t, 0].numpy() > 0.5
            iou = np.logical_and(default, mask).sum() / np.logical_or(default, mask).sum()
            assert iou > (0.95 if t == 0 else 0.8), (trial, t, iou)


def test_fast_augment_shares_contrast_and_noise_and_keeps_the_padding():
    from dataset.transforms import FastTrainTransform

    frame = np.full((40, 112, 3), 124, np.uint8)               # letterboxed into rows 12..51 of 64x112
    mask = np.zeros((40, 112), np.uint8)
    for seed in range(3):
        fast = FastTrainTransform(OUT)([frame] * 3, [mask] * 3, np.random.default_rng(seed))[0]
        default = TrainTransform(OUT)([frame] * 3, [mask] * 3, np.random.default_rng(seed))[0]
        values = unnormalise(fast)[:, 24:40, 40:72]            # inside the frame, away from affine borders
        assert np.ptp(values) < 1e-3
        assert values.mean() == pytest.approx(unnormalise(default)[:, 24:40, 40:72].mean(), abs=1e-3)
        assert np.allclose(fast[:, :, :12].numpy(), PADDING[None, :, None, None], atol=1e-6)
        assert np.allclose(fast[:, :, 52:].numpy(), PADDING[None, :, None, None], atol=1e-6)


def test_datasets_thread_fast_augment(tmp_path):
    from dataset.transforms import FastTrainTransform

    root = write_synthetic_youtube_vis(str(tmp_path / "ytvis"), seed=2, videos_per_class=2, frames_per_video=5,
                                       frame_size=(72, 128), num_categories=8)
    spec = EpisodeSpec(image_size=OUT, fast_augment=True)
    fast = build_dataset("youtube_vis", root=root, split="train", group=1, spec=spec, episodes_per_class=1)
    plain = build_dataset("youtube_vis", root=root, split="val", group=1, spec=spec, episodes_per_class=1)
    assert isinstance(fast.transform, FastTrainTransform) and fast.fast_augment
    assert isinstance(plain.transform, TestTransform)          # evaluation is never augmented
    item = fast[0]
    assert item["query_img"].shape == (15, 3, *OUT) and item["support_mask"].shape == (5, 1, *OUT)
