"""The smooth attacks inside the toolboxes robustness researchers already run.

- :mod:`smoothadv_tf.integrations.art`: IBM's Adversarial Robustness Toolbox (``pip install 'smoothadv_tf[art]'``),
  ``EvasionAttack`` subclasses on an ART ``TensorFlowV2Classifier``.
- :mod:`smoothadv_tf.integrations.foolbox`: foolbox 3 (``pip install 'smoothadv_tf[foolbox]'``), attacks on an
  ``fb.TensorFlowModel``.

Both run the library's own attacks (:mod:`smoothadv_tf.attacks`) on the toolbox's model seen through
:func:`unit_interval_model` (images in [0, 1], the toolbox's bounds and preprocessing applied inside), so a
result equals the direct call's image for image. Neither toolbox is needed to import :mod:`smoothadv_tf`;
importing an integration without its toolbox raises one ImportError naming the ``pip install`` to run.
"""

from smoothadv_tf.integrations.common import attack_parameters, require, unit_interval_model  # noqa: F401
