"""Any image size: `data.image_size`, `data.resize`, colour modes, the size-keyed decode cache."""

import io
import tarfile

import numpy as np
import pytest
from PIL import Image

from compactcnn.config import DataConfig, load_config
from compactcnn.data import imagefolder, load_data, resize
from compactcnn.errors import UserError


@pytest.fixture(autouse=True)
def private_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("COMPACTCNN_DATA", str(tmp_path / "cache"))
    return tmp_path / "cache"


def _encode(image: Image.Image, format: str = "PNG") -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=format)
    return buffer.getvalue()


def _halves(height: int, width: int) -> np.ndarray:
    """Left third red, middle third green, right third blue: shows what a crop kept."""
    pixels = np.zeros((height, width, 3), np.uint8)
    third = width // 3
    pixels[:, :third, 0] = 255
    pixels[:, third : 2 * third, 1] = 255
    pixels[:, 2 * third :, 2] = 255
    return pixels


def _folder(root, files: dict[str, bytes]):
    for name, blob in files.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_bytes(blob)
    return root


def test_bilinear_stretches_and_crop_keeps_the_centre_at_height_by_width():
    wide = Image.fromarray(_halves(48, 144))  # 48 high, 144 wide
    stretched = np.asarray(resize.fit_image(wide, (24, 36), "bilinear", "wide.png"))
    assert stretched.shape == (24, 36, 3)
    assert stretched[:, 0, 0].min() == 255 and stretched[:, -1, 2].min() == 255  # all thirds
    cropped = np.asarray(resize.fit_image(wide, (24, 24), "crop", "wide.png"))
    assert cropped.shape == (24, 24, 3)
    # Scaled to 24x72, then the centre 24 columns: the green third (blended at its edges only).
    inner = cropped[:, 2:-2]
    assert inner[..., 1].min() == 255 and inner[..., 0].max() == 0 and inner[..., 2].max() == 0


def test_reject_names_the_image_and_its_size():
    with pytest.raises(UserError, match=r"'odd.png' is 40x30 \(height x width\), not data.image"):
        resize.fit_image(Image.new("RGB", (30, 40)), (48, 48), "reject", "odd.png")
    same = Image.new("RGB", (48, 40))
    assert resize.fit_image(same, (40, 48), "reject", "ok.png") is same


def test_folder_at_48_by_48_converts_every_colour_mode_to_rgb(tmp_path):
    grey16 = Image.fromarray(np.full((20, 20), 65535 // 2, np.uint16))
    transparent = np.dstack([np.full((48, 48, 3), 90, np.uint8), np.zeros((48, 48), np.uint8)])
    rgba = Image.fromarray(transparent)
    grey200 = Image.fromarray(np.full((48, 48, 3), 200, np.uint8))
    palette = grey200.convert("P", palette=Image.Palette.ADAPTIVE)
    files = {
        "train/a/grey.png": _encode(Image.fromarray(np.full((48, 48), 77, np.uint8))),
        "train/a/grey16.png": _encode(grey16),
        "train/b/rgba.png": _encode(rgba),
        "train/b/palette.gif": _encode(palette, "GIF"),
        "train/b/photo.jpg": _encode(Image.fromarray(_halves(96, 96)), "JPEG"),
        "test/a/0.png": _encode(Image.fromarray(_halves(48, 48))),
        "test/b/0.png": _encode(Image.fromarray(_halves(64, 32))),
    }
    data = imagefolder.load(_folder(tmp_path / "images", files), size=(48, 48))
    assert data.x_train.shape == (5, 48, 48, 3) and data.x_test.shape == (2, 48, 48, 3)
    assert data.x_val.shape == (0, 48, 48, 3)
    grey, grey16_rgb, palette_rgb, _, rgba_rgb = data.x_train  # sorted by path
    assert (grey == 77).all()
    assert np.abs(grey16_rgb.astype(int) - 128).max() <= 1  # 16-bit mid-grey, not clipped white
    assert (rgba_rgb == 90).all()  # alpha dropped
    assert np.abs(palette_rgb.astype(int) - 200).max() <= 1


def test_reject_mode_refuses_a_folder_image_of_another_size(tmp_path):
    files = {
        "train/a/0.png": _encode(Image.fromarray(_halves(48, 48))),
        "train/a/1.png": _encode(Image.fromarray(_halves(50, 48))),
        "test/a/0.png": _encode(Image.fromarray(_halves(48, 48))),
    }
    root = _folder(tmp_path / "images", files)
    with pytest.raises(UserError, match=r"1.png' is 50x48 \(height x width\)"):
        imagefolder.load(root, size=(48, 48), resize_mode="reject")


def test_decode_cache_keys_on_size_and_mode(tmp_path, private_cache, monkeypatch):
    monkeypatch.setattr(imagefolder, "CACHE_AFTER_SECONDS", 0.0)
    files = {
        "train/a/0.png": _encode(Image.fromarray(_halves(64, 64))),
        "test/a/0.png": _encode(Image.fromarray(_halves(64, 64))),
    }
    archive = tmp_path / "images.tar.gz"
    with tarfile.open(archive, "w:gz") as tar:
        for name, blob in files.items():
            info = tarfile.TarInfo(name)
            info.size = len(blob)
            tar.addfile(info, io.BytesIO(blob))
    small = imagefolder.load(archive, size=(32, 32))
    large = imagefolder.load(archive, size=(48, 40))
    cropped = imagefolder.load(archive, size=(48, 40), resize_mode="crop")
    assert len(list((private_cache / "imagefolder").glob("*.npz"))) == 3
    # Read back from the caches, each at its own size and mode.
    assert imagefolder.load(archive, size=(32, 32)).x_train.shape == (1, 32, 32, 3)
    again = imagefolder.load(archive, size=(48, 40))
    assert again.x_train.shape == (1, 48, 40, 3) and again.x_val.shape == (0, 48, 40, 3)
    np.testing.assert_array_equal(again.x_train, large.x_train)
    assert not np.array_equal(cropped.x_train, large.x_train)
    assert small.x_train.shape == (1, 32, 32, 3)


def test_load_data_brings_every_source_to_the_size():
    config = DataConfig(
        name="synthetic", synthetic_size=8, synthetic_classes=2, image_size=[40, 24]
    )
    data = load_data(config, seed=0)
    assert data.x_train.shape == (8, 40, 24, 3) and data.x_test.shape == (8, 40, 24, 3)
    sample = load_data(DataConfig(name="sample", image_size=[48, 48], test_limit=20), seed=0)
    assert sample.x_train.shape[1:] == (48, 48, 3) and sample.x_test.shape == (20, 48, 48, 3)
    message = r"0000.jpg' is 32x32 \(height x width\), not data.image_size 48x48"
    with pytest.raises(UserError, match=message):
        load_data(DataConfig(name="sample", image_size=[48, 48], resize="reject"), seed=0)


def test_fixed_size_arrays_are_resized_or_rejected():
    images = np.zeros((3, 32, 32, 3), np.uint8)
    assert resize.fit_arrays(images, (32, 32), "reject", "cifar10") is images
    assert resize.fit_arrays(images, (64, 48), "crop", "cifar10").shape == (3, 64, 48, 3)
    with pytest.raises(UserError, match=r"data source 'cifar10' has 32x32 images.*\[32, 32\]"):
        resize.fit_arrays(images, (64, 48), "reject", "cifar10")


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("data.image_size=[48]", "must be .height, width."),
        ("data.image_size=[4, 48]", "sides 8 to 2048"),
        ("data.resize=stretch", "'stretch' is not one of bilinear, crop, reject"),
        ("data.normalize.scale=0", "must not be 0"),
        ("data.normalize.mean=[1, 2, 3]", "needs mean and std together"),
        ("data.normalize.std=[0]", "needs mean and std together"),
        ("model.width=0", "'model.width' must be positive"),
    ],
)
def test_bad_size_and_normalization_settings_are_one_line_errors(override, message):
    with pytest.raises(UserError, match=message):
        load_config(None, [override])


def test_normalize_settings_load_from_overrides():
    config = load_config(
        None, ["data.normalize.mean=[125, 123, 114]", "data.normalize.std=[63, 62, 66]"]
    )
    assert config.data.normalize.mean == [125.0, 123.0, 114.0]
    with pytest.raises(UserError, match="keep one of the two forms"):
        load_config(None, ["data.normalize.scale=0.5", "data.normalize.std=[63]"])
