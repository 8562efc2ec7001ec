"""The scale diagnosis splits wrong pixels by where they lie in the label."""

import numpy as np

from benchmarks.scale import class_table, errors_by_region, per_class, resampled, uniform_blocks


def test_uniform_blocks_marks_exactly_the_one_class_blocks():
    label = np.zeros((64, 96), np.uint8)
    label[40, 70] = 3  # breaks the 32×32 block at rows 32-63, columns 64-95
    uniform = uniform_blocks(label, 32)
    assert not uniform[32:, 64:].any() and uniform[:32].all() and uniform[32:, :64].all()


def test_errors_are_counted_in_the_region_they_fall_in():
    label = np.zeros((256, 256), np.uint8)
    label[:, 128:] = 1  # left half one class: its 128×128 blocks are uniform
    label[200:210, 140:150] = 2  # a small object: its 32×32 block holds a boundary
    label[201, 141] = 255  # ignored pixels count nowhere
    prediction = label.copy()
    prediction[10, 10] = 1  # wrong inside a uniform 128×128 block
    prediction[200, 140] = 1  # wrong on the object's boundary block
    prediction[201, 141] = 7  # ignored
    counts = errors_by_region(prediction, label)
    assert counts["inside 128×128"][0] == 1
    assert counts["boundary 32×32"][0] == 1
    assert counts["inside 32×32 only"] == [0, 128 * 128 - 32 * 32]
    assert sum(total for _, total in counts.values()) == 256 * 256 - 1


def test_per_class_iou_leaves_absent_classes_out_and_the_table_names_them():
    matrix = np.array([[3, 1, 0], [0, 4, 0], [0, 0, 0]])  # class 2: never labelled nor predicted
    assert per_class(matrix) == [75.0, 80.0, None]
    result = {
        "sha256": "ab" * 32,
        "classes": ["road", "car", "sky"],
        "sizes": {"8x8": {"class_iou_pc": per_class(matrix), "class_iou_pc_downscaled": None}},
    }
    lines = class_table([result])
    assert "| road | car | sky |" in lines[3]
    assert lines[-1] == "| abababababab | 8x8 | 75.0 | 80.0 | – |"


def test_resampling_keeps_labels_and_scales_both_sides():
    rng = np.random.default_rng(2)
    image = rng.integers(0, 256, (100, 200, 3), dtype=np.uint8)
    label = np.zeros((100, 200), np.uint8)
    label[:, 100:] = 5
    small_image, small_label = resampled(image, label)
    assert small_image.shape == (95, 190, 3) and small_label.shape == (95, 190)
    assert set(np.unique(small_label)) == {0, 5}
    assert not np.array_equal(small_image, image[:95, :190])
