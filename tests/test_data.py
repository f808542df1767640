"""Loaders read real Fashion-MNIST and photo folders; each bad input raises one clear DataError."""

import gzip
import os

import numpy as np
import pytest
from conftest import photo
from PIL import Image

from smoothadv_tf import data
from smoothadv_tf.data import DataError


def test_fashion_mnist_idx(fashion_test):
    assert fashion_test.images.shape == (10000, 28, 28, 1)
    assert fashion_test.images.dtype == np.float32
    assert 0.0 <= fashion_test.images.min() and fashion_test.images.max() <= 1.0
    assert set(np.unique(fashion_test.labels)) == set(range(10))
    assert np.bincount(fashion_test.labels).tolist() == [1000] * 10  # the published class balance


def test_uncompressed_idx_and_mnist_data_dir(tmp_path, fashion_test):
    # MNIST code path, exercised on the Fashion-MNIST files (same IDX format), gunzipped, with the image bytes
    # inverted (255 - v, header kept) so that only these files, read byte-exactly, give the expected images
    header = 16  # magic + 3 dimensions
    for stem in ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"):
        with gzip.open(os.path.join(data.FASHION_MNIST_DIR, stem + ".gz")) as src:
            raw = bytearray(src.read())
        if "images" in stem:
            raw[header:] = bytes(255 - np.frombuffer(bytes(raw[header:]), np.uint8))
        (tmp_path / stem).write_bytes(bytes(raw))
    ds = data.load_mnist("test", str(tmp_path))
    np.testing.assert_allclose(ds.images, 1.0 - fashion_test.images, atol=1e-6)
    np.testing.assert_array_equal(ds.labels, fashion_test.labels)


def test_bad_idx_files(tmp_path):
    with pytest.raises(DataError, match="file not found"):
        data.load_idx_dataset(str(tmp_path), "test")
    (tmp_path / "t10k-images-idx3-ubyte").write_bytes(b"\x00\x00\x08\x03" + (2).to_bytes(4, "big") * 3 + b"\x00" * 5)
    (tmp_path / "t10k-labels-idx1-ubyte").write_bytes(b"\x00\x00\x08\x01" + (2).to_bytes(4, "big") + b"\x01\x0c")
    with pytest.raises(DataError, match="t10k-images-idx3-ubyte: IDX header promises 8 bytes"):
        data.load_idx_dataset(str(tmp_path), "test")
    (tmp_path / "t10k-images-idx3-ubyte").write_bytes(b"\x00\x00\x08\x03" + (2).to_bytes(4, "big") * 3 + b"\x00" * 8)
    with pytest.raises(DataError, match="label 12 out of range"):
        data.load_idx_dataset(str(tmp_path), "test")
    (tmp_path / "t10k-labels-idx1-ubyte").write_bytes(b"PK\x03\x04")
    with pytest.raises(DataError, match="bad magic"):
        data.load_idx_dataset(str(tmp_path), "test")
    with pytest.raises(DataError, match="no such directory"):
        data.load_fashion_mnist("test", str(tmp_path / "nope"))


def _write_png(path, img):
    Image.fromarray((np.clip(img, 0, 1) * 255).round().astype(np.uint8)).save(path)


@pytest.fixture
def nips17_dir(tmp_path):
    for k, name in enumerate(("astronaut", "chelsea")):
        _write_png(tmp_path / f"img{k}.png", photo(name, 299))
    (tmp_path / "dev_dataset.csv").write_text(
        "ImageId,URL,x1,y1,x2,y2,TrueLabel,TargetClass,OriginalLandingURL,License,Author,AuthorProfileURL\n"
        "img0,u,0,0,1,1,835,10,u,l,a,p\nimg1,u,0,0,1,1,286,20,u,l,a,p\n"
    )
    return tmp_path


def test_nips17_loader(nips17_dir):
    ds = data.load_nips17(str(nips17_dir))
    assert ds.images.shape == (2, 299, 299, 3) and ds.labels.tolist() == [835, 286] and ds.ids == ["img0", "img1"]
    np.testing.assert_allclose(ds.images[0], photo("astronaut", 299), atol=0.5 / 255 + 1e-6)


def test_nips17_bad_inputs(nips17_dir):
    csv = nips17_dir / "dev_dataset.csv"
    text = csv.read_text()
    csv.write_text(text.replace("img1,", "img9,"))
    with pytest.raises(DataError, match=r"row 3: image .*img9.png not found"):
        data.load_nips17(str(nips17_dir))
    csv.write_text(text.replace(",286,", ",1001,"))
    with pytest.raises(DataError, match="row 3: label 1001 out of range"):
        data.load_nips17(str(nips17_dir))
    csv.write_text(text)
    (nips17_dir / "img1.png").write_bytes(b"not a png at all")
    with pytest.raises(DataError, match="img1.png: corrupt or unreadable"):
        data.load_nips17(str(nips17_dir))
    _write_png(nips17_dir / "img1.png", photo("chelsea", 200))
    with pytest.raises(DataError, match="img1.png: image is 200x200, expected 299x299"):
        data.load_nips17(str(nips17_dir))
    csv.write_text("ImageId,Label\nimg0,3\n")
    with pytest.raises(DataError, match="lacks column"):
        data.load_nips17(str(nips17_dir))


def test_image_folder(tmp_path):
    _write_png(tmp_path / "a.png", photo("astronaut", 120))
    _write_png(tmp_path / "b.png", photo("coffee", 64))
    ds = data.load_image_folder(str(tmp_path), (32, 32))
    assert ds.images.shape == (2, 32, 32, 3) and ds.labels.tolist() == [-1, -1]
    # each file, in name order, resized to the photo scikit-image's resize gives (another resampler: close,
    # while a swapped order, a flip or BGR channels differ by > 0.1 on average)
    for k, name in enumerate(("astronaut", "coffee")):
        assert np.abs(ds.images[k] - photo(name, 32)).mean() < 0.02, name
    (tmp_path / "labels.csv").write_text("filename,label\na.png,7\nb.png,3\n")
    assert data.load_image_folder(str(tmp_path), (32, 32)).labels.tolist() == [7, 3]
    (tmp_path / "labels.csv").write_text("filename,label\nc.png,7\n")
    with pytest.raises(DataError, match="'c.png' not in"):
        data.load_image_folder(str(tmp_path), (32, 32))
    (tmp_path / "labels.csv").write_text("filename,label\na.png,seven\n")
    with pytest.raises(DataError, match="'seven' is not an integer"):
        data.load_image_folder(str(tmp_path), (32, 32))
    (tmp_path / "labels.csv").write_text("filename,label\na.png,NaN\n")
    with pytest.raises(DataError, match="'NaN' is not an integer"):
        data.load_image_folder(str(tmp_path), (32, 32))
    (tmp_path / "empty").mkdir()
    np.save(tmp_path / "empty" / "x.npy", np.zeros(3))
    with pytest.raises(DataError, match="no PNG/JPEG"):
        data.load_image_folder(str(tmp_path / "empty"), (32, 32))


def test_float_image_is_rejected(tmp_path):
    path = tmp_path / "nan.tiff"
    Image.fromarray(np.full((4, 4), np.nan, np.float32), mode="F").save(path)
    with pytest.raises(DataError, match="unsupported image mode F"):
        data.read_image(str(path), channels=1)


def test_sixteen_bit_png_keeps_its_values(tmp_path):
    """A real photo as a 16-bit grey PNG (Pillow mode I;16) loads as its values / 65535, not clipped to white."""
    grey = np.round(photo("astronaut").mean(-1) * 65535).astype(np.uint16)
    Image.fromarray(grey).save(tmp_path / "grey16.png")
    with Image.open(tmp_path / "grey16.png") as im:
        assert im.mode == "I;16"  # what the loader meets
    x = data.read_image(str(tmp_path / "grey16.png"), channels=1)
    assert x.shape == (512, 512, 1) and x.dtype == np.float32
    np.testing.assert_allclose(x[..., 0], grey / 65535.0, atol=1e-7)
    rgb = data.read_image(str(tmp_path / "grey16.png"), channels=3)
    np.testing.assert_array_equal(rgb, np.repeat(x, 3, -1))
    # in a folder, resized: the photo's grey at 32x32 (bilinear vs scikit-image's anti-aliased resize: close)
    ds = data.load_image_folder(str(tmp_path), (32, 32))
    assert ds.ids == ["grey16"] and ds.images.shape == (1, 32, 32, 3)
    assert np.abs(ds.images[0, ..., 0] - photo("astronaut", 32).mean(-1)).mean() < 0.02


def test_transparent_pixels_are_refused_and_an_opaque_alpha_is_dropped(tmp_path):
    """A real photo with an alpha channel: opaque everywhere, it loads as the photo itself; with transparent
    pixels (RGBA, grey + alpha, or a palette with a transparent index) it is refused naming the file, since
    the attack would see colours under the transparency that no viewer shows."""
    rgb = (photo("astronaut", 64) * 255).round().astype(np.uint8)
    opaque = np.concatenate([rgb, np.full((64, 64, 1), 255, np.uint8)], -1)
    Image.fromarray(opaque, mode="RGBA").save(tmp_path / "opaque.png")
    Image.fromarray(rgb).save(tmp_path / "plain.png")
    np.testing.assert_array_equal(
        data.read_image(str(tmp_path / "opaque.png")), data.read_image(str(tmp_path / "plain.png"))
    )
    holed = opaque.copy()
    holed[:8, :8, 3] = 0  # a transparent corner
    Image.fromarray(holed, mode="RGBA").save(tmp_path / "rgba.png")
    grey = np.stack([rgb.mean(-1).astype(np.uint8), holed[..., 3]], -1)
    Image.fromarray(grey, mode="LA").save(tmp_path / "la.png")
    palette = Image.fromarray(rgb).convert("P", palette=Image.ADAPTIVE, colors=16)
    index = int(np.asarray(palette)[0, 0])
    palette.save(tmp_path / "palette.png", transparency=index)
    for name in ("rgba.png", "la.png", "palette.png"):
        with pytest.raises(DataError, match=rf"{name}: \d+ of 4096 pixels are \(partly\) transparent"):
            data.read_image(str(tmp_path / name))
    folder = tmp_path / "folder"  # the same refusal from the image-folder loader, before anything is attacked
    folder.mkdir()
    (tmp_path / "rgba.png").rename(folder / "rgba.png")
    with pytest.raises(DataError, match="rgba.png: 64 of 4096 pixels"):
        data.load_image_folder(str(folder), (64, 64))


def test_integer_image_out_of_the_16_bit_range_is_refused(tmp_path):
    path = tmp_path / "wide.tiff"
    values = np.round(photo("coffee", 16).mean(-1) * 200000).astype(np.int32)
    assert values.max() > 65535
    Image.fromarray(values).save(path)  # mode I: 32-bit integers
    with pytest.raises(DataError, match=r"wide.tiff: I image with values \d+\.\.\d+, not 16-bit"):
        data.read_image(str(path), channels=1)


def test_two_files_of_one_stem_are_refused(tmp_path):
    """shoe.png and shoe.jpg are two images; with one id the second's records would be dropped."""
    _write_png(tmp_path / "shoe.png", photo("astronaut", 64))
    Image.fromarray((photo("coffee", 64) * 255).round().astype(np.uint8)).save(tmp_path / "shoe.jpg")
    _write_png(tmp_path / "boot.png", photo("chelsea", 64))
    with pytest.raises(DataError, match=r"shoe.jpg and shoe.png: one image id 'shoe'"):
        data.load_image_folder(str(tmp_path), (32, 32))
    os.remove(tmp_path / "shoe.jpg")
    assert data.load_image_folder(str(tmp_path), (32, 32)).ids == ["boot", "shoe"]
    (tmp_path / "labels.csv").write_text("filename,label\nshoe.png,3\nboot.png,1\nshoe.png,4\n")
    with pytest.raises(DataError, match=r"labels.csv: rows 2 and 4 both label 'shoe.png'"):
        data.load_image_folder(str(tmp_path), (32, 32))


def test_nips17_rows_naming_one_image_twice_or_no_file_name(nips17_dir):
    csv = nips17_dir / "dev_dataset.csv"
    header, first, second = csv.read_text().splitlines()
    csv.write_text("\n".join([header, first, second, first.replace(",835,", ",10,")]) + "\n")
    with pytest.raises(DataError, match=r"rows 2 and 4 both list ImageId 'img0'"):
        data.load_nips17(str(nips17_dir))
    (nips17_dir / "sub").mkdir()
    _write_png(nips17_dir / "sub" / "img0.png", photo("astronaut", 299))
    csv.write_text("\n".join([header, first.replace("img0,", "sub/img0,")]) + "\n")
    with pytest.raises(DataError, match=r"row 2: ImageId 'sub/img0' is not a file name"):
        data.load_nips17(str(nips17_dir))
    csv.write_text("TrueLabel,ImageId\n3\n")  # a short row: no ImageId at all
    with pytest.raises(DataError, match=r"row 2: ImageId None is not a file name"):
        data.load_nips17(str(nips17_dir))
