"""Cityscapes and ADE20k loaders on tiny fixtures written in the real folder layouts."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from cityscapesscripts.helpers.labels import name2label
from PIL import Image

from model.data import DATASETS, build_dataset, make_scene
from model.data.ade20k import ADE20K_CLASSES, ADE20kSegmentation
from model.data.cityscapes import CITYSCAPES_CLASSES, CityscapesSegmentation
from model.data.synthetic import TEST_SEEDS, VAL_SEEDS

# labelIds written into the fixture and the trainIds they must become: road, sidewalk,
# building, car / unlabeled, ego vehicle, bicycle, person / ground, parking, sky, train.
CITYSCAPES_IDS = np.array([[7, 8, 11, 26], [0, 1, 33, 24], [6, 9, 23, 31]], dtype=np.uint8)
CITYSCAPES_TRAIN = np.array([[0, 1, 2, 13], [255, 255, 18, 11], [255, 255, 10, 16]], dtype=np.uint8)


def _rgb(height: int, width: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, size=(height, width, 3), dtype=np.uint8)


def _write_cityscapes(root: Path, split: str = "train") -> dict[str, np.ndarray]:
    images = {}
    for i, (city, frame) in enumerate([("aachen", "000000_000019"), ("bremen", "000003_000019")]):
        name = f"{city}_{frame}"
        (root / "leftImg8bit" / split / city).mkdir(parents=True)
        (root / "gtFine" / split / city).mkdir(parents=True)
        image = _rgb(3, 4, i)
        Image.fromarray(image).save(root / "leftImg8bit" / split / city / f"{name}_leftImg8bit.png")
        ids = CITYSCAPES_IDS if i == 0 else np.full((3, 4), 26, dtype=np.uint8)
        Image.fromarray(ids).save(root / "gtFine" / split / city / f"{name}_gtFine_labelIds.png")
        # Other gtFine files sit next to the label ids and must be ignored.
        Image.fromarray(ids).save(root / "gtFine" / split / city / f"{name}_gtFine_color.png")
        images[name] = image
    return images


def _write_ade(root: Path, folder: str = "training") -> None:
    base = root / "ADEChallengeData2016"
    (base / "images" / folder).mkdir(parents=True)
    (base / "annotations" / folder).mkdir(parents=True)
    flat = np.full((6, 8, 3), (200, 100, 50), dtype=np.uint8)
    Image.fromarray(flat).save(base / "images" / folder / "ADE_train_00000001.jpg", quality=95)
    annotation = np.array([[0, 1, 2, 150, 151, 255, 13, 21]] * 6, dtype=np.uint8)
    Image.fromarray(annotation).save(base / "annotations" / folder / "ADE_train_00000001.png")
    grey = np.full((6, 8), 90, dtype=np.uint8)  # some ADE images are greyscale
    Image.fromarray(grey).save(base / "images" / folder / "ADE_train_00000002.jpg", quality=95)
    Image.fromarray(np.ones((6, 8), np.uint8)).save(
        base / "annotations" / folder / "ADE_train_00000002.png"
    )


# Cityscapes ------------------------------------------------------------------------------


def test_cityscapes_classes_come_from_the_official_table() -> None:
    assert len(CITYSCAPES_CLASSES) == 19
    assert CITYSCAPES_CLASSES[0] == "road" and CITYSCAPES_CLASSES[-1] == "bicycle"
    for name in ("road", "car", "person", "traffic sign"):
        assert CITYSCAPES_CLASSES.index(name) == name2label[name].trainId


def test_cityscapes_pairs_and_label_mapping(tmp_path: Path) -> None:
    images = _write_cityscapes(tmp_path)
    dataset = CityscapesSegmentation(tmp_path, "train")
    assert len(dataset) == 2
    image, label = dataset[0]  # sorted: aachen first
    np.testing.assert_array_equal(image, images["aachen_000000_000019"])
    assert label.dtype == np.uint8 and image.dtype == np.uint8
    np.testing.assert_array_equal(label, CITYSCAPES_TRAIN)
    assert (dataset[1][1] == CITYSCAPES_CLASSES.index("car")).all()


def test_cityscapes_transform(tmp_path: Path) -> None:
    _write_cityscapes(tmp_path, "val")
    dataset = CityscapesSegmentation(tmp_path, "val", transform=lambda image, label: label.max())
    assert dataset[0] == 255


def test_cityscapes_layout_errors(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="leftImg8bit"):
        CityscapesSegmentation(tmp_path, "train")
    (tmp_path / "leftImg8bit" / "train").mkdir(parents=True)
    with pytest.raises(FileNotFoundError, match="gtFine"):
        CityscapesSegmentation(tmp_path, "train")
    (tmp_path / "gtFine" / "train").mkdir(parents=True)
    with pytest.raises(FileNotFoundError, match="found none"):
        CityscapesSegmentation(tmp_path, "train")
    with pytest.raises(ValueError, match="split"):
        CityscapesSegmentation(tmp_path, "training")


def test_cityscapes_missing_label_is_named(tmp_path: Path) -> None:
    _write_cityscapes(tmp_path)
    missing = tmp_path / "gtFine/train/bremen/bremen_000003_000019_gtFine_labelIds.png"
    missing.unlink()
    with pytest.raises(FileNotFoundError, match=r"bremen_000003_000019_gtFine_labelIds\.png"):
        CityscapesSegmentation(tmp_path, "train")


def test_size_mismatch_is_an_error(tmp_path: Path) -> None:
    _write_cityscapes(tmp_path)
    label_path = tmp_path / "gtFine/train/aachen/aachen_000000_000019_gtFine_labelIds.png"
    Image.fromarray(np.zeros((5, 5), np.uint8)).save(label_path)
    with pytest.raises(ValueError, match="same size"):
        CityscapesSegmentation(tmp_path, "train")[0]


# ADE20k ----------------------------------------------------------------------------------


def test_ade_class_names() -> None:
    assert len(ADE20K_CLASSES) == 150 == len(set(ADE20K_CLASSES))
    assert ADE20K_CLASSES[:3] == ("wall", "building", "sky")
    assert ADE20K_CLASSES[12] == "person" and ADE20K_CLASSES[20] == "car"
    assert ADE20K_CLASSES[-1] == "flag"


def test_ade_pairs_and_label_mapping(tmp_path: Path) -> None:
    _write_ade(tmp_path)
    dataset = ADE20kSegmentation(tmp_path, "train")
    assert len(dataset) == 2
    image, label = dataset[0]
    assert image.shape == (6, 8, 3) and image.dtype == np.uint8
    assert np.abs(image.astype(int) - (200, 100, 50)).max() < 8  # JPEG, nearly exact
    # 0 -> ignore, k -> k - 1, values above 150 are not classes -> ignore.
    np.testing.assert_array_equal(label[0], [255, 0, 1, 149, 255, 255, 12, 20])
    grey_image, grey_label = dataset[1]
    assert grey_image.shape == (6, 8, 3) and (grey_label == 0).all()


def test_ade_accepts_the_challenge_folder_and_benchmark_split_names(tmp_path: Path) -> None:
    _write_ade(tmp_path, "validation")
    assert len(ADE20kSegmentation(tmp_path / "ADEChallengeData2016", "val")) == 2
    assert len(ADE20kSegmentation(tmp_path, "validation")) == 2


def test_ade_layout_errors(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="ADEChallengeData2016/images/training"):
        ADE20kSegmentation(tmp_path, "train")
    _write_ade(tmp_path)
    (tmp_path / "ADEChallengeData2016/annotations/training/ADE_train_00000002.png").unlink()
    with pytest.raises(FileNotFoundError, match=r"ADE_train_00000002\.png"):
        ADE20kSegmentation(tmp_path, "train")
    with pytest.raises(ValueError, match="split"):
        ADE20kSegmentation(tmp_path, "test")


# Registry --------------------------------------------------------------------------------


def test_registry_names() -> None:
    assert set(DATASETS) == {"synthetic", "cityscapes", "ade20k"}
    with pytest.raises(KeyError, match=r"valid names: \['ade20k', 'cityscapes', 'synthetic'\]"):
        build_dataset("kitti", "train")


def test_build_synthetic() -> None:
    dataset = build_dataset("synthetic", "val", height=32, width=64)
    assert len(dataset) == len(VAL_SEEDS)
    np.testing.assert_array_equal(dataset[0][1], make_scene(VAL_SEEDS[0], 32, 64)[1])
    assert len(build_dataset("synthetic", "train")) == 1_000_000
    assert len(build_dataset("synthetic", "test")) == len(TEST_SEEDS)
    with pytest.raises(ValueError, match="split"):
        build_dataset("synthetic", "holdout")
    with pytest.raises(ValueError, match="root"):
        build_dataset("synthetic", "train", root="/data")


def test_build_real_datasets_with_resize(tmp_path: Path) -> None:
    _write_cityscapes(tmp_path)
    _write_ade(tmp_path)
    city = build_dataset("cityscapes", "train", root=tmp_path, height=6, width=8)
    image, label = city[0]
    assert image.shape == (6, 8, 3) and label.shape == (6, 8)
    np.testing.assert_array_equal(label[::2, ::2], CITYSCAPES_TRAIN)  # nearest: ids survive
    ade = build_dataset("ade20k", "train", root=tmp_path, transform=lambda i, lab: lab.shape)
    assert ade[0] == (6, 8)
    with pytest.raises(ValueError, match="root"):
        build_dataset("cityscapes", "train")
    with pytest.raises(ValueError, match="height and width"):
        build_dataset("ade20k", "train", root=tmp_path, height=6)
