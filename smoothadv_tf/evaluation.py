"""The names of the evaluation protocol (paper §5.1) and the experiment runner, as they were first published
here; each now lives in the module of its concern and is re-exported here so that existing imports keep working:

- :mod:`smoothadv_tf.records`: the records store (locks, repair, atomic writes), merging shards, run identity;
- :mod:`smoothadv_tf.statistics`: best records, P_suc and D̄ (eq. 20), the operating characteristic (eq. 21),
  time per image;
- :mod:`smoothadv_tf.report`: tables, the operating characteristic plot, PNGs;
- :mod:`smoothadv_tf.runner`: attacking a dataset and appending the records (:func:`run_experiment`);
- :mod:`smoothadv_tf.config`: the parameter sets of each attack in a run (:func:`attack_runs`, TARGETS).
"""

from smoothadv_tf.config import DISTORTION_TARGETING, TARGETS, attack_runs  # noqa: F401
from smoothadv_tf.errors import InputError  # noqa: F401
from smoothadv_tf.records import (  # noqa: F401
    FLOAT_TOLERANCE,
    WALL_CLOCK_FIELDS,
    RecordsError,
    RecordStore,
    atomic_write,
    merge_records,
    read_records,
    record_conflict,
    record_key,
    repair_records,
    shard_coverage_problem,
    shard_indices,
    writer_lock,
)
from smoothadv_tf.report import plot_operating_characteristic, write_summary  # noqa: F401
from smoothadv_tf.report import save_pngs as _save_pngs  # noqa: F401
from smoothadv_tf.runner import run_experiment  # noqa: F401
from smoothadv_tf.statistics import (  # noqa: F401
    PERCEPTIBILITY,
    best_records,
    operating_characteristic,
    per_image_outcomes,
    summarize,
    time_per_image,
)
