"""Fetch and unpack the original TF-slim checkpoints into models/ (needs internet; nothing here depends on it).

python scripts/download_checkpoints.py --names=inception_v3,adv_inception_v3,resnet_v2_50
"""

import os
import tarfile
import tempfile
import urllib.request

from absl import flags

from smoothadv_tf.cli import run_script

FLAGS = flags.FLAGS
ARCHIVES = {
    "inception_v3": ("inception_v3_2016_08_28.tar.gz", ["inception_v3.ckpt"]),
    "adv_inception_v3": ("adv_inception_v3_2017_08_18.tar.gz", ["adv_inception_v3.ckpt.index"]),
    "ens3_adv_inception_v3": ("ens3_adv_inception_v3_2017_08_18.tar.gz", ["ens3_adv_inception_v3.ckpt.index"]),
    "ens4_adv_inception_v3": ("ens4_adv_inception_v3_2017_08_18.tar.gz", ["ens4_adv_inception_v3.ckpt.index"]),
    "resnet_v2_50": ("resnet_v2_50_2017_04_14.tar.gz", ["resnet_v2_50.ckpt"]),
}
BASE_URL = "http://download.tensorflow.org/models/"
flags.DEFINE_list("names", list(ARCHIVES), f"checkpoints to fetch, from {list(ARCHIVES)}")
flags.DEFINE_string("models_dir", "models", "where to unpack")
flags.register_validator(
    "names", lambda v: bool(v) and all(n in ARCHIVES for n in v), f"expected names from {list(ARCHIVES)}"
)


def main(_):
    os.makedirs(FLAGS.models_dir, exist_ok=True)
    for name in FLAGS.names:
        archive, expected = ARCHIVES[name]
        if all(os.path.exists(os.path.join(FLAGS.models_dir, f)) for f in expected):
            print(f"{name}: already in {FLAGS.models_dir}")
            continue
        with tempfile.TemporaryDirectory() as tmp:
            path = os.path.join(tmp, archive)
            print(f"{name}: downloading {BASE_URL + archive}")
            try:
                urllib.request.urlretrieve(BASE_URL + archive, path)
            except OSError as e:
                raise SystemExit(f"{name}: download of {BASE_URL + archive} failed ({e})") from e
            with tarfile.open(path) as tar:
                tar.extractall(FLAGS.models_dir, filter="data")
        missing = [f for f in expected if not os.path.exists(os.path.join(FLAGS.models_dir, f))]
        if missing:
            raise SystemExit(f"{name}: {archive} unpacked but {missing} not found in {FLAGS.models_dir}")
        print(f"{name}: ok ({', '.join(expected)})")


if __name__ == "__main__":
    run_script(main)
