"""Real-data loaders. Every loader returns float32 images in [0, 1], NHWC, and int64 labels.

Three sources, matching the paper's experiments (§5.2):
- MNIST / Fashion-MNIST from IDX files (`*-images-idx3-ubyte[.gz]`, `*-labels-idx1-ubyte[.gz]`);
- the NIPS-2017 adversarial-competition dev set: 299x299 PNGs plus its CSV (TrueLabel indexes the
  1001-class slim output, 0 = background);
- any folder of PNG/JPEG images with an optional `labels.csv`.

Bad input raises `DataError` naming the file and the problem; nothing is skipped silently.
"""

from __future__ import annotations

import csv
import gzip
import os
import struct
from dataclasses import dataclass

import numpy as np

from smoothadv_tf.errors import InputError

FASHION_MNIST_DIR = "/usr/share/datasets/fashion-mnist"
IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg")


class DataError(InputError):
    """A data file is missing, corrupt, or inconsistent."""


@dataclass
class Dataset:
    """Images (N,H,W,C float32 in [0,1]), labels (N,) int64 (-1 = unknown) and per-image ids."""

    images: np.ndarray
    labels: np.ndarray
    ids: list[str]
    num_classes: int

    def __len__(self) -> int:
        return len(self.ids)


# --------------------------------------------------------------------------------------------- IDX files
def _open_maybe_gz(path: str):
    return gzip.open(path, "rb") if path.endswith(".gz") else open(path, "rb")


def read_idx(path: str) -> np.ndarray:
    """Read one IDX file (unsigned-byte data, the MNIST format) into a uint8 array."""
    try:
        with _open_maybe_gz(path) as f:
            raw = f.read()
    except OSError as e:
        raise DataError(f"{path}: cannot read IDX file ({e})") from e
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0:
        raise DataError(f"{path}: not an IDX file (bad magic number)")
    if raw[2] != 0x08:
        raise DataError(f"{path}: IDX data type 0x{raw[2]:02x} is not unsigned byte (0x08)")
    ndim = raw[3]
    header = 4 + 4 * ndim
    if len(raw) < header:
        raise DataError(f"{path}: truncated IDX header")
    shape = struct.unpack(">" + "I" * ndim, raw[4:header])
    size = int(np.prod(shape))
    if len(raw) - header != size:
        raise DataError(f"{path}: IDX header promises {size} bytes of data, file has {len(raw) - header}")
    return np.frombuffer(raw, dtype=np.uint8, offset=header).reshape(shape)


def _find_idx(directory: str, stem: str) -> str:
    for name in (stem, stem + ".gz"):
        path = os.path.join(directory, name)
        if os.path.exists(path):
            return path
    raise DataError(f"{os.path.join(directory, stem)}[.gz]: file not found")


def load_idx_dataset(directory: str, split: str = "test") -> Dataset:
    """Load an MNIST-format split ('train' or 't10k'/'test') from a directory of IDX files."""
    prefix = {"train": "train", "test": "t10k", "t10k": "t10k"}.get(split)
    if prefix is None:
        raise DataError(f"split={split!r}: expected 'train' or 'test'")
    images = read_idx(_find_idx(directory, f"{prefix}-images-idx3-ubyte"))
    labels_path = _find_idx(directory, f"{prefix}-labels-idx1-ubyte")
    labels = read_idx(labels_path)
    if images.ndim != 3 or labels.ndim != 1 or len(images) != len(labels):
        raise DataError(f"{directory}: {split} images {images.shape} and labels {labels.shape} do not match")
    if labels.max(initial=0) > 9:
        raise DataError(f"{labels_path}: label {int(labels.max())} out of range 0..9")
    x = images.astype(np.float32)[..., None] / 255.0
    return Dataset(x, labels.astype(np.int64), [f"{split}-{i:05d}" for i in range(len(x))], 10)


def load_fashion_mnist(split: str = "test", data_dir: str | None = None) -> Dataset:
    """Fashion-MNIST: IDX files in `data_dir`, else the Debian package's folder, else keras.datasets."""
    directory = data_dir or FASHION_MNIST_DIR
    if os.path.isdir(directory):
        return load_idx_dataset(directory, split)
    if data_dir is not None:
        raise DataError(f"--data_dir={data_dir}: no such directory")
    return _from_keras("fashion_mnist", split, hint="apt-get install -y dataset-fashion-mnist")


def load_mnist(split: str = "test", data_dir: str | None = None) -> Dataset:
    """MNIST: IDX files in `data_dir`, else keras.datasets.mnist (needs the network)."""
    if data_dir is not None:
        if not os.path.isdir(data_dir):
            raise DataError(f"--data_dir={data_dir}: no such directory")
        return load_idx_dataset(data_dir, split)
    return _from_keras("mnist", split, hint="pass --data_dir with the four MNIST IDX files")


def _from_keras(name: str, split: str, hint: str) -> Dataset:
    import keras

    try:
        (xtr, ytr), (xte, yte) = getattr(keras.datasets, name).load_data()
    except Exception as e:  # the download is the only way left; say how to avoid it
        raise DataError(f"{name}: no local IDX files and the download failed ({e}); {hint}") from e
    x, y = (xtr, ytr) if split == "train" else (xte, yte)
    return Dataset(
        x.astype(np.float32)[..., None] / 255.0,
        y.astype(np.int64),
        [f"{split}-{i:05d}" for i in range(len(x))],
        10,
    )


# ------------------------------------------------------------------------------------------ image files
EIGHT_BIT_MODES = ("L", "RGB", "RGBA", "P", "LA")
# 16-bit grey PNGs: Pillow opens them as I;16 (or I, 32-bit integers); their 0..65535 are scaled by 1/65535
# (converting them to "L" would clip at 255: nearly all white). 16-bit colour PNGs Pillow opens as 8-bit RGB.
SIXTEEN_BIT_MODES = ("I;16", "I;16B", "I;16L", "I")


def read_image(path: str, size: tuple[int, int] | None = None, channels: int = 3, resize: bool = True) -> np.ndarray:
    """Read one PNG/JPEG as float32 HWC in [0,1]; resize to `size` (H, W) or require it. 8-bit images are
    resized in 8 bits; 16-bit grey images keep their 16 bits (resized as floats)."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as im:
            im.load()
            if im.mode not in EIGHT_BIT_MODES + SIXTEEN_BIT_MODES:
                raise DataError(f"{path}: unsupported image mode {im.mode}")
            _refuse_transparency(path, im)
            sixteen = im.mode in SIXTEEN_BIT_MODES
            if sixteen:
                values = np.asarray(im)
                if values.min() < 0 or values.max() > 65535:
                    raise DataError(
                        f"{path}: {im.mode} image with values {values.min()}..{values.max()}, not 16-bit (0..65535)"
                    )
                im = Image.fromarray(values.astype(np.float32) / 65535.0)  # mode F
            else:
                im = im.convert({1: "L", 3: "RGB"}[channels])
            if size is not None and im.size != (size[1], size[0]):
                if not resize:
                    raise DataError(f"{path}: image is {im.size[1]}x{im.size[0]}, expected {size[0]}x{size[1]}")
                im = im.resize((size[1], size[0]), Image.BILINEAR)
            x = np.asarray(im, dtype=np.float32) if sixteen else np.asarray(im, dtype=np.float32) / 255.0
    except (UnidentifiedImageError, OSError, SyntaxError) as e:
        raise DataError(f"{path}: corrupt or unreadable image ({e})") from e
    if x.ndim == 2:
        x = np.repeat(x[..., None], channels, -1) if sixteen else x[..., None]
    if not np.isfinite(x).all():
        raise DataError(f"{path}: image contains NaN or Inf")
    return x


def _refuse_transparency(path: str, im) -> None:
    """An image with transparent pixels is refused (DataError): the model would be attacked on the colour values
    under the transparency, which no viewer shows (a PNG's transparent pixels are often black or arbitrary).
    An alpha channel that is opaque everywhere is fine; it is dropped."""
    if im.mode not in ("RGBA", "LA", "PA") and "transparency" not in im.info:
        return
    alpha = np.asarray(im.convert("RGBA"))[..., 3]
    clear = int((alpha < 255).sum())
    if clear:
        raise DataError(
            f"{path}: {clear} of {alpha.size} pixels are (partly) transparent; flatten the image onto a background "
            "first (e.g. PIL's Image.alpha_composite) so that what is attacked is what is seen"
        )


def _read_csv(path: str, required: tuple[str, ...]) -> list[dict]:
    try:
        with open(path, newline="") as f:
            rows = list(csv.DictReader(f))
    except OSError as e:
        raise DataError(f"{path}: cannot read CSV ({e})") from e
    header = set(rows[0].keys()) if rows else set()
    missing = [c for c in required if c not in header]
    if missing:
        raise DataError(f"{path}: CSV lacks column(s) {missing}")
    return rows


def _parse_label(value: str, path: str, row: int, num_classes: int) -> int:
    try:
        label = int(value)
    except (TypeError, ValueError) as e:
        raise DataError(f"{path}: row {row}: label {value!r} is not an integer") from e
    if not 0 <= label < num_classes:
        raise DataError(f"{path}: row {row}: label {label} out of range 0..{num_classes - 1}")
    return label


def load_nips17(directory: str, csv_path: str | None = None, num_classes: int = 1001, size: int = 299) -> Dataset:
    """NIPS-2017 competition dev set: `<ImageId>.png` (299x299 RGB) listed in `dev_dataset.csv`."""
    if not os.path.isdir(directory):
        raise DataError(f"{directory}: no such directory")
    csv_path = csv_path or _first_existing(directory, ("dev_dataset.csv", "images.csv", "labels.csv"))
    rows = _read_csv(csv_path, ("ImageId", "TrueLabel"))
    images, labels, ids, rows_of = [], [], [], {}
    for i, row in enumerate(rows, start=2):  # row 1 is the header
        image_id = row["ImageId"]
        if not image_id or image_id in (".", "..") or "/" in image_id or os.sep in image_id:
            raise DataError(f"{csv_path}: row {i}: ImageId {image_id!r} is not a file name")
        if image_id in rows_of:  # one id, one image: records are keyed by it
            raise DataError(f"{csv_path}: rows {rows_of[image_id]} and {i} both list ImageId {image_id!r}")
        rows_of[image_id] = i
        path = os.path.join(directory, image_id + ".png")
        if not os.path.exists(path):
            raise DataError(f"{csv_path}: row {i}: image {path} not found")
        images.append(read_image(path, (size, size), 3, resize=False))
        labels.append(_parse_label(row["TrueLabel"], csv_path, i, num_classes))
        ids.append(image_id)
    if not images:
        raise DataError(f"{csv_path}: no images listed")
    return Dataset(np.stack(images), np.asarray(labels, np.int64), ids, num_classes)


def _first_existing(directory: str, names: tuple[str, ...]) -> str:
    for name in names:
        path = os.path.join(directory, name)
        if os.path.exists(path):
            return path
    raise DataError(f"{directory}: none of {names} found")


def load_image_folder(directory: str, size: tuple[int, int], channels: int = 3, num_classes: int = 1001) -> Dataset:
    """Any folder of PNG/JPEG images, resized to `size`; labels from `labels.csv` (filename,label) or
    -1 (unknown: the caller then uses the model's own prediction as the label)."""
    if not os.path.isdir(directory):
        raise DataError(f"{directory}: no such directory")
    names = sorted(n for n in os.listdir(directory) if n.lower().endswith(IMAGE_EXTENSIONS))
    if not names:
        raise DataError(f"{directory}: no PNG/JPEG images")
    # An image's id is its name without the extension (what runs so far recorded and hashed into their
    # identity); two files of one stem would share an id, so they are refused rather than renamed.
    stems: dict = {}
    for name in names:
        other = stems.setdefault(os.path.splitext(name)[0], name)
        if other != name:
            raise DataError(
                f"{os.path.join(directory, other)} and {name}: one image id {os.path.splitext(name)[0]!r} "
                "(ids are file names without the extension): rename or remove one"
            )
    labels = np.full(len(names), -1, np.int64)
    csv_path = os.path.join(directory, "labels.csv")
    if os.path.exists(csv_path):
        index, rows_of = {n: k for k, n in enumerate(names)}, {}
        for i, row in enumerate(_read_csv(csv_path, ("filename", "label")), start=2):
            if row["filename"] not in index:
                raise DataError(f"{csv_path}: row {i}: image {row['filename']!r} not in {directory}")
            if row["filename"] in rows_of:
                raise DataError(f"{csv_path}: rows {rows_of[row['filename']]} and {i} both label {row['filename']!r}")
            rows_of[row["filename"]] = i
            labels[index[row["filename"]]] = _parse_label(row["label"], csv_path, i, num_classes)
    images = np.stack([read_image(os.path.join(directory, n), size, channels) for n in names])
    return Dataset(images, labels, [os.path.splitext(n)[0] for n in names], num_classes)


def load_dataset(name: str, data_dir: str | None = None, split: str = "test", image_size: int = 299) -> Dataset:
    """Dispatch on the `--dataset` flag: mnist | fashion_mnist | nips17 | folder."""
    if name == "fashion_mnist":
        return load_fashion_mnist(split, data_dir)
    if name == "mnist":
        return load_mnist(split, data_dir)
    if data_dir is None:
        raise DataError(f"--dataset={name} needs --data_dir")
    if name == "nips17":
        return load_nips17(data_dir, size=image_size)
    if name == "folder":
        return load_image_folder(data_dir, (image_size, image_size))
    raise DataError(f"--dataset={name}: expected mnist, fashion_mnist, nips17 or folder")
