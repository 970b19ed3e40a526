import shutil
from pathlib import Path

import pytest
import torch
from PIL import Image

from pretrain.datasets import ImageFolder
from pretrain.transforms import LoadImagePIL

DEMO_IMAGES = "data/demo/coco/images"


def _folder_with_bad_files(tmp_path):
    folder = tmp_path / "images"
    folder.mkdir()
    for name in sorted(p.name for p in Path(DEMO_IMAGES).glob("*.jpg"))[:3]:
        shutil.copy(f"{DEMO_IMAGES}/{name}", folder / name)
    data = (folder / sorted(p.name for p in folder.iterdir())[0]).read_bytes()
    (folder / "truncated.jpg").write_bytes(data[: len(data) // 3])
    (folder / "empty.jpg").write_bytes(b"")
    return folder


def test_bad_images_named_before_training(tmp_path):
    folder = _folder_with_bad_files(tmp_path)
    with pytest.raises(ValueError) as err:
        ImageFolder(data_root=str(tmp_path), data_prefix=dict(img_path="images"), verify="full")
    message = str(err.value)
    assert "2 of 5 images cannot be used" in message
    assert "truncated.jpg" in message
    assert "empty.jpg: empty file (0 bytes)" in message
    assert "on_bad_image='skip'" in message


def test_bad_images_skipped_with_count(tmp_path):
    folder = _folder_with_bad_files(tmp_path)
    dataset = ImageFolder(data_root=str(tmp_path), data_prefix=dict(img_path="images"),
                          verify="full", on_bad_image="skip")
    assert len(dataset) == 3
    assert not any("truncated" in item["img_path"] or "empty" in item["img_path"]
                   for item in dataset.data_list)


def test_empty_folder_rejected(tmp_path):
    (tmp_path / "images").mkdir()
    with pytest.raises(ValueError, match="no images found"):
        ImageFolder(data_root=str(tmp_path), data_prefix=dict(img_path="images"))


def test_missing_folder_rejected(tmp_path):
    with pytest.raises(FileNotFoundError, match="image folder not found"):
        ImageFolder(data_root=str(tmp_path), data_prefix=dict(img_path="nothing"))


def test_grayscale_and_cmyk_decode_to_rgb(tmp_path):
    Image.new("L", (20, 10), 128).save(tmp_path / "gray.png")
    Image.new("CMYK", (20, 10), (0, 0, 0, 0)).save(tmp_path / "cmyk.jpg")
    loader = LoadImagePIL()
    for name in ("gray.png", "cmyk.jpg"):
        img = loader(dict(img_path=str(tmp_path / name)))["img"]
        assert img.mode == "RGB"
        assert img.size == (20, 10)


def test_decode_failure_returns_none_for_refetch(tmp_path):
    (tmp_path / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 not a jpeg")
    loader = LoadImagePIL()
    assert loader(dict(img_path=str(tmp_path / "broken.jpg"))) is None
    assert loader.num_failed == 1


def test_coco_json_selects_training_split():
    dataset = ImageFolder(data_root="data/demo/coco", data_prefix=dict(img_path="images"),
                          ann_file="annotations/instances_train.json", verify="none")
    assert len(dataset) == 30
    assert torch.tensor([item["img_path"].endswith(".jpg") for item in dataset.data_list]).all()


def _seeded_loader(sampler_type: str, num_workers: int, persistent: bool, epoch: int = 0, init_fn=None):
    from mmengine.dataset import DefaultSampler, default_collate

    from pretrain.samplers import SeededSampler

    from pretrain.transforms import PackImage, RandomFlipPIL, RandomResizedCropPIL

    pipeline = [LoadImagePIL(draft_size=96), RandomResizedCropPIL(size=32, scale=(0.2, 1.0)),
                RandomFlipPIL(prob=0.5), PackImage()]
    dataset = ImageFolder(data_root=DEMO_IMAGES, pipeline=pipeline, verify="none")
    sampler = (SeededSampler if sampler_type == "seeded" else DefaultSampler)(dataset, shuffle=True, seed=3)
    sampler.set_epoch(epoch)
    loader = torch.utils.data.DataLoader(dataset, batch_size=8, sampler=sampler, num_workers=num_workers,
                                         persistent_workers=persistent, collate_fn=default_collate,
                                         worker_init_fn=init_fn, generator=torch.Generator().manual_seed(0))
    return loader, sampler


def _epoch_pixels(loader) -> torch.Tensor:
    return torch.cat([batch["inputs"].float() for batch in loader])


def test_seeded_augmentation_survives_worker_restart():
    """Each sample's crop and flip follow from (seed, epoch, index): a persistent worker in
    its second epoch and a fresh worker started at that epoch (as after --resume) agree."""
    from mmengine.dataset import DefaultSampler

    from pretrain.samplers import SeededSampler

    persistent, sampler = _seeded_loader("seeded", num_workers=1, persistent=True)
    first = _epoch_pixels(persistent)
    sampler.set_epoch(1)
    second = _epoch_pixels(persistent)
    fresh, _ = _seeded_loader("seeded", num_workers=0, persistent=False, epoch=1)
    torch.manual_seed(123)
    state = torch.get_rng_state()
    assert torch.equal(_epoch_pixels(fresh), second)
    # With no workers the pipeline runs in this process and leaves its random state alone.
    assert torch.equal(torch.get_rng_state(), state)
    assert not torch.equal(first, second)
    # The sample order is DefaultSampler's.
    dataset = persistent.dataset
    assert [int(i) for i in SeededSampler(dataset, seed=3)] == list(DefaultSampler(dataset, seed=3))


def test_default_sampler_repeats_worker_stream():
    """The failure SeededSampler removes: MMEngine-style fixed worker seeding makes a fresh
    worker repeat its first epoch's random stream, unlike a persistent one."""
    from functools import partial

    from mmengine.dataset import worker_init_fn

    def loader(epoch):
        init_fn = partial(worker_init_fn, num_workers=1, rank=0, seed=3)
        return _seeded_loader("default", num_workers=1, persistent=True, epoch=epoch, init_fn=init_fn)

    persistent, sampler = loader(0)
    _epoch_pixels(persistent)
    sampler.set_epoch(1)
    continued = _epoch_pixels(persistent)
    restarted, _ = loader(1)
    assert not torch.equal(_epoch_pixels(restarted), continued)


def test_seeded_sampler_rejects_wrappers():
    from mmengine.dataset import RepeatDataset

    from pretrain.samplers import SeededSampler

    dataset = ImageFolder(data_root=DEMO_IMAGES, verify="none")
    with pytest.raises(TypeError, match="RepeatDataset.*DefaultSampler"):
        SeededSampler(RepeatDataset(dataset, times=2), seed=0)


def test_data_check_command_follows_config_verify(tmp_path, capsys):
    from mimae.data_checks import main as data_check_main

    _folder_with_bad_files(tmp_path)
    (tmp_path / "images" / "empty.jpg").unlink()
    config = tmp_path / "verify_none.py"
    config.write_text(
        f"_base_ = [{str(Path('configs/pretrain/mae_vit-base-p16_8xb512-amp-coslr-1600e_in1k_demo.py').resolve())!r}]\n"
        f"train_dataloader = dict(dataset=dict(data_root={str(tmp_path)!r}, data_prefix=dict(img_path='images'), "
        "ann_file='', verify='none', downscale=None))\n")

    # The config checks existence only, as its training run would, so the truncated file passes.
    data_check_main([str(config)])
    assert "data check passed" in capsys.readouterr().out

    with pytest.raises(ValueError, match="truncated.jpg"):
        data_check_main([str(config), "--verify", "header"])


def test_data_check_command_enters_wrappers(tmp_path):
    from mimae.data_checks import main as data_check_main

    _folder_with_bad_files(tmp_path)
    config = tmp_path / "wrapped.py"
    config.write_text(
        f"_base_ = [{str(Path('configs/pretrain/mae_vit-base-p16_8xb512-amp-coslr-1600e_in1k_demo.py').resolve())!r}]\n"
        "train_dataloader = dict(dataset=dict(_delete_=True, type='ConcatDataset', datasets=[dict(\n"
        f"    type='ImageFolder', data_root={str(tmp_path)!r}, data_prefix=dict(img_path='images'), verify='full')]))\n")
    with pytest.raises(ValueError, match="truncated.jpg"):
        data_check_main([str(config)])
