"""k-NN and linear-probe top-1 of a pretrained encoder on a data set in ImageNet folder layout.

The data root needs ``train/<class>/*`` and ``val/<class>/*``. The encoder stays frozen.

Example::

    python tools/readout.py work_dirs/demo/mimae_encoder.pth work_dirs/study/digits --img-size 32 --out readout.json
"""
from __future__ import annotations

import argparse
import json
import os
import os.path as osp

import torch
from torchvision import datasets, transforms

from mimae.checkpoint import encoder_state_dict, read_weights
from mimae.evaluation import build_encoder_from_state, extract_features, knn_accuracy, linear_probe_accuracy

IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


def folder_dataset(root: str, img_size: int) -> datasets.ImageFolder:
    """Read an ImageNet-layout folder, resized and center-cropped to ``img_size``."""
    if not osp.isdir(root):
        raise SystemExit(f"folder not found: {root}; the data root needs train/ and val/ class folders")
    transform = transforms.Compose([
        transforms.Lambda(lambda img: img.convert("RGB")),
        transforms.Resize(img_size, interpolation=transforms.InterpolationMode.BICUBIC),
        transforms.CenterCrop(img_size),
        transforms.ToTensor(),
        transforms.Normalize(IMAGENET_MEAN, IMAGENET_STD),
    ])
    return datasets.ImageFolder(root, transform=transform)


def align_classes(train: datasets.ImageFolder, val: datasets.ImageFolder) -> None:
    """Give ``val`` the class indices of ``train``, in place.

    Each ``ImageFolder`` numbers the class folders it finds, so a val split without some
    training class would shift every later label. A val class that training lacks has
    no index to take and raises ``SystemExit``.
    """
    unknown = sorted(set(val.classes) - set(train.classes))
    if unknown:
        raise SystemExit(f"val has class folders that train lacks: {unknown[:10]}"
                         f"{' ...' if len(unknown) > 10 else ''}; both splits need the same class names")
    if val.class_to_idx == {name: train.class_to_idx[name] for name in val.classes}:
        return
    index = [train.class_to_idx[name] for name in val.classes]
    val.samples = [(path, index[target]) for path, target in val.samples]
    val.targets = [target for _, target in val.samples]
    val.imgs = val.samples
    val.class_to_idx = {name: train.class_to_idx[name] for name in val.classes}


def loader(dataset: datasets.ImageFolder, batch_size: int = 256) -> torch.utils.data.DataLoader:
    return torch.utils.data.DataLoader(dataset, batch_size=batch_size, shuffle=False, num_workers=0)


def evaluate(encoder_file: str, data_root: str, img_size: int, pooling: str = "cls", k: int = 20,
             probe_epochs: int = 100, num_heads: int | None = None) -> dict:
    """Return k-NN and linear-probe top-1 (percent) of the encoder in ``encoder_file``."""
    state = encoder_state_dict(read_weights(encoder_file))
    encoder = build_encoder_from_state(state, num_heads)
    train = folder_dataset(osp.join(data_root, "train"), img_size)
    val = folder_dataset(osp.join(data_root, "val"), img_size)
    align_classes(train, val)
    train_x, train_y = extract_features(encoder, loader(train), pooling)
    test_x, test_y = extract_features(encoder, loader(val), pooling)
    return dict(
        encoder=encoder_file, data_root=data_root, pooling=pooling, num_train=len(train_y), num_val=len(test_y),
        knn_top1=100 * knn_accuracy(train_x, train_y, test_x, test_y, k=k),
        linear_probe_top1=100 * linear_probe_accuracy(train_x, train_y, test_x, test_y, epochs=probe_epochs),
    )


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description="k-NN and linear-probe read-out of a frozen encoder")
    parser.add_argument("encoder", help="encoder file written by tools/convert_checkpoint.py (or MAE/timm weights)")
    parser.add_argument("data_root", help="folder with train/<class>/ and val/<class>/ images")
    parser.add_argument("--img-size", type=int, default=224, help="input side in pixels")
    parser.add_argument("--pooling", choices=["cls", "mean"], default="cls", help="feature of an image")
    parser.add_argument("--k", type=int, default=20, help="neighbours of the k-NN vote")
    parser.add_argument("--probe-epochs", type=int, default=100, help="epochs of the linear probe")
    parser.add_argument("--num-heads", type=int, help="attention heads (default: embed_dim // 64)")
    parser.add_argument("--out", help="JSON file for the results")
    args = parser.parse_args(argv)
    result = evaluate(args.encoder, args.data_root, args.img_size, args.pooling, args.k, args.probe_epochs,
                      args.num_heads)
    print(f"k-NN top-1 {result['knn_top1']:.2f} %, linear probe top-1 {result['linear_probe_top1']:.2f} %")
    if args.out:
        os.makedirs(osp.dirname(osp.abspath(args.out)), exist_ok=True)
        with open(args.out, "w") as f:
            json.dump(result, f, indent=2)
    return result


if __name__ == "__main__":
    main()
