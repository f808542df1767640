"""Smooth Adversarial Examples (Zhang, Avrithis, Furon, Amsaleg, 2019) in TensorFlow 2 / Keras 3.

The perturbation r of an image x_o is shaped by graph Laplacian smoothing guided by x_o itself,
r = ŝ_α(z) (eq. 9, 17), so it is smooth where the image is flat and free across its edges. Importing the
package imports nothing heavy; each submodule is usable on its own:

- :mod:`.smoothing` (§3, eq. 6-9), :mod:`.graph` (eq. 5), :mod:`.layers`: ŝ_α, its solvers and set-up cache,
  the pixel graph, Keras layers.
- :mod:`.attacks` (§2, §4, eq. 10-19): FGSM, I-FGSM, PGD₂, C&W and their smooth versions sPGD₂, sC&W, plus
  DDN and FMN, on any Keras model or callable mapping [0, 1] images to logits; :mod:`.presets` holds the
  paper's §5.2 parameters and the protocols.
- :mod:`.training` (§5.3): adversarial training against plain and smooth perturbations.
- :mod:`.models` (§5.2): C4, the slim InceptionV3 / ResNetV2-50 with their original checkpoints, wrappers for
  your own models.
- :mod:`.statistics` (§5.1, eq. 20-21), :mod:`.perceptibility`, :mod:`.magnify` (Appendix A, eq. 22),
  :mod:`.filters`: the evaluation's measures and the bilateral filter.
- :mod:`.config`, :mod:`.runner`, :mod:`.records`, :mod:`.report`: resumable, shardable experiment runs and
  their tables, from the scripts or from Python.
- :mod:`.integrations`: the smooth attacks inside ART and foolbox.
"""
