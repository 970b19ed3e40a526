import json

import pytest
import torch
from PIL import Image

import readout as readout_tool
from mimae.evaluation import build_encoder_from_state, knn_accuracy, linear_probe_accuracy
from mimae.models import VisionTransformer


def _separable(n_per_class=40, classes=4, dim=16, seed=0):
    centers = torch.randn(classes, dim, generator=torch.Generator().manual_seed(100)) * 3
    generator = torch.Generator().manual_seed(seed)
    labels = torch.arange(classes).repeat_interleave(n_per_class)
    features = centers[labels] + torch.randn(len(labels), dim, generator=generator)
    return features, labels


def test_knn_separable_beats_chance():
    train_x, train_y = _separable(seed=0)
    test_x, test_y = _separable(seed=1)
    # Chance is 25 %; well-separated clusters must be classified almost perfectly.
    assert knn_accuracy(train_x, train_y, test_x, test_y, k=5) >= 0.95


def test_linear_probe_separable_beats_chance():
    train_x, train_y = _separable(seed=0)
    test_x, test_y = _separable(seed=1)
    assert linear_probe_accuracy(train_x, train_y, test_x, test_y, epochs=30) >= 0.95


def test_knn_random_labels_near_chance():
    train_x, _ = _separable(seed=0)
    test_x, _ = _separable(seed=1)
    random_train = torch.randint(0, 4, (len(train_x),), generator=torch.Generator().manual_seed(2))
    random_test = torch.randint(0, 4, (len(test_x),), generator=torch.Generator().manual_seed(3))
    assert knn_accuracy(train_x, random_train, test_x, random_test) < 0.45


def test_encoder_rebuilt_from_weights():
    vit = VisionTransformer(img_size=32, patch_size=8, embed_dim=128, depth=3, num_heads=2)
    rebuilt = build_encoder_from_state(vit.state_dict(), num_heads=2)
    x = torch.randn(1, 3, 32, 32)
    assert torch.equal(rebuilt(x), vit(x))


def test_readout_tool_on_image_folder(tmp_path):
    # Two classes that differ in brightness: any encoder separates them.
    for split, count in (("train", 12), ("val", 6)):
        for label, value in (("dark", 30), ("bright", 220)):
            folder = tmp_path / "data" / split / label
            folder.mkdir(parents=True)
            for i in range(count):
                Image.new("RGB", (40, 40), (value + i, value, value - i)).save(folder / f"{i}.png")
    vit = VisionTransformer(img_size=32, patch_size=8, embed_dim=64, depth=2, num_heads=1)
    torch.save({"model": vit.state_dict()}, tmp_path / "encoder.pth")
    out = tmp_path / "readout.json"
    readout_tool.main([str(tmp_path / "encoder.pth"), str(tmp_path / "data"), "--img-size", "32",
                       "--k", "3", "--probe-epochs", "20", "--out", str(out)])
    result = json.loads(out.read_text())
    assert result["num_train"] == 24
    assert result["num_val"] == 12
    assert result["knn_top1"] >= 90.0
    assert result["linear_probe_top1"] >= 90.0


def _class_folders(root, names):
    for name in names:
        (root / name).mkdir(parents=True)
        Image.new("RGB", (8, 8)).save(root / name / "0.png")


def test_val_without_a_class_keeps_train_labels(tmp_path):
    _class_folders(tmp_path / "train", ["ant", "bee", "cat"])
    _class_folders(tmp_path / "val", ["bee", "cat"])
    train = readout_tool.folder_dataset(str(tmp_path / "train"), 8)
    val = readout_tool.folder_dataset(str(tmp_path / "val"), 8)
    # On its own, val numbers bee 0 and cat 1, which in train are ant and bee.
    assert val.targets == [0, 1]

    readout_tool.align_classes(train, val)

    assert val.targets == [1, 2]
    assert [val[i][1] for i in range(len(val))] == [1, 2]


def test_val_class_missing_from_train_rejected(tmp_path):
    _class_folders(tmp_path / "train", ["ant", "bee"])
    _class_folders(tmp_path / "val", ["bee", "wasp"])
    train = readout_tool.folder_dataset(str(tmp_path / "train"), 8)
    val = readout_tool.folder_dataset(str(tmp_path / "val"), 8)
    with pytest.raises(SystemExit, match=r"val has class folders that train lacks: \['wasp'\]"):
        readout_tool.align_classes(train, val)
