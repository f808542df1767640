"""Graph Laplacian smoothing guided by an image (paper §3, eq. 6-9; used by eq. 12 and 17-19).

    𝒲 = D^-1/2 W D^-1/2,  L_α = (I - α 𝒲) / (1 - α)                         (§3, "Filtering")
    s_α(z) = L_α^-1 z                                                      (eq. 8)
    ŝ_α(z) = diag(s_α(1))^-1 s_α(z)                                         (eq. 9)

L_α is symmetric positive-definite with eigenvalues in [1, (1+α)/(1-α)] (those of 𝒲 lie in [-1, 1]).
Solvers:
- ``"cg"``: a fixed number of conjugate-gradient iterations (50 by default, the paper's ImageNet setting),
  batched over images and channels. ``gradient="autodiff"`` differentiates through the iterations (the
  paper's choice): the exact gradient of the *truncated* solve, by a hand-written reverse pass over the
  recorded search directions (memory: one image per iteration). ``gradient="implicit"`` solves the adjoint
  system L_α g' = g with CG in the backward pass (L_α is symmetric): the gradient of the *exact* solve.
- ``"chebyshev"``: Chebyshev iteration on the known eigenvalue interval. Its k-th iterate is a fixed
  polynomial p_k(L_α) applied to z, so it is *linear* in z: its exact gradient is the same polynomial applied
  to g (both ``gradient`` settings coincide), nothing is recorded, and an iteration has no inner product (the
  part of a CG iteration that XLA's CPU code runs worst). Its relative error is at most 1 / T_k(1/α) for
  every z (T_k the Chebyshev polynomial), so :func:`chebyshev_iterations` gives the count for a tolerance.
- ``"dense"``: (I - α𝒲) = C Cᵀ is factorised once per guide image (Cholesky, n <= 4096 pixels) and each
  solve is two triangular solves: the exact ŝ_α (the paper "pre-computes L_α^-1" for MNIST).
- ``"auto"``: ŝ_α exact to AUTO_TOLERANCE, by whichever of dense and Chebyshev the measured cost model
  (:func:`resolve_solver`) predicts faster for the image size, batch and number of applications.

What depends on the guide only (the graph, s_α(1), a factorisation) is its *set-up*
(:class:`SmoothingSetup`): computed once per image and kept in a bounded cache keyed by the image's content
(:data:`SETUP_CACHE`), so an ε sweep, a binary search or a repeated attack call on the same images never
rebuilds it.

Every CG division is guarded per image and channel: a column whose residual is zero (z = 0, or converged
earlier than the iteration count) stops moving, so values and gradients stay finite.
"""

from __future__ import annotations

import hashlib
import inspect
import math
import numbers
from collections import OrderedDict
from typing import NamedTuple

import numpy as np
import tensorflow as tf

from smoothadv_tf.graph import (
    HALF_OFFSETS,
    ImageGraph,
    check_graph_options,
    check_guide,
    image_graph,
    shift,
    stencil_apply,
)
from smoothadv_tf.numerics import safe_div

SOLVERS = ("auto", "chebyshev", "cg", "dense")
DENSE_MAX_PIXELS = 4096
# The bound solver="auto" holds s_α(z) to: relative 2-norm error per image and channel, for every z (float32
# itself reaches ~1e-7). ŝ_α = s_α(z) / s_α(1) is a ratio of two such solves: measured within 5x of it.
AUTO_TOLERANCE = 1e-6
# A CG column is frozen once ||r||^2 <= RESIDUAL_FLOOR * ||z||^2 (relative residual 1e-7, float32 precision).
RESIDUAL_FLOOR = 1e-14
# s_α(1) >= 1 - α exactly; truncated CG stays close, but the division of eq. (9) is floored anyway.
MIN_NORMALISER = 1e-6
# Independent partial sums per channel in inner products (see _dot); 128-256 measured fastest on a 2-core CPU.
DOT_LANES = 128
# Values per compiled CG call (see _solve_in_chunks): one channel of a 299x299 image, 167 28x28 images.
CHUNK_ELEMENTS = 2**17


def _dot(a: tf.Tensor, b: tf.Tensor) -> tf.Tensor:
    """Per image and channel inner product over pixels: (B, H, W, C) -> (B, 1, 1, C), or per row of the
    solves' (B·C, H·W) rows: (R, P) -> (R, 1).

    XLA's CPU code for a reduction over the pixel axes runs ~one add at a time (2/3 of a CG iteration went
    there), so with static shapes the products are summed in DOT_LANES * C independent lanes first (a
    reduction over the major axis, which vectorises), then the lanes are summed per channel.
    """
    if a.shape.rank == 2:
        a, b = a[:, None, :, None], b[:, None, :, None]  # (R, 1, P, 1): one channel, same lane reduction
        return tf.reshape(_dot(a, b), (-1, 1))
    batch, height, width, channels = a.shape
    if None in (batch, height, width, channels):
        return tf.reduce_sum(a * b, axis=[1, 2], keepdims=True)
    n, lanes = height * width * channels, DOT_LANES * channels  # lanes % C == 0: each lane sees one channel
    rows = -(-n // lanes)
    flat = tf.pad(tf.reshape(a * b, (batch, n)), [[0, 0], [0, rows * lanes - n]])
    partial = tf.reduce_sum(tf.reshape(flat, (batch, rows, lanes)), axis=1)
    return tf.reshape(tf.reduce_sum(tf.reshape(partial, (batch, DOT_LANES, channels)), axis=1), (batch, 1, 1, channels))


def conjugate_gradient(matvec, b: tf.Tensor, iterations: int, tol: float = 0.0, record: bool = False):
    """Solve A x = b for SPD A, independently per image and channel, starting at x = 0.

    Runs exactly `iterations` steps (fixed cost, differentiable); a column freezes once its relative residual
    falls below max(tol, 1e-7). With ``record=True`` it returns ``(x, trajectory)``: the search directions and
    scalars that :func:`conjugate_gradient_vjp` needs to differentiate the iterations without re-running them.
    """
    floor = tf.maximum(tf.constant(tol**2, b.dtype), RESIDUAL_FLOOR) * _dot(b, b)
    x = tf.zeros_like(b)
    r = b
    p = r
    rs = _dot(r, r)
    # Trajectory, only if recorded: p_k, <p_k, A p_k>, <r_k, r_k> for k < K (TensorArrays: in place under XLA).
    shapes = (b.shape, rs.shape, rs.shape) if record else ()
    trajectory = tuple(tf.TensorArray(b.dtype, size=iterations, element_shape=shape) for shape in shapes)

    def body(k, x, r, p, rs, *trajectory):
        active = rs > floor
        ap = matvec(p)
        pap = _dot(p, ap)
        step = safe_div(rs, pap, active)
        x = x + step * p
        r = r - step * ap
        rs_new = _dot(r, r)
        beta = safe_div(rs_new, rs, active & (rs_new > floor))
        trajectory = tuple(array.write(k, value) for array, value in zip(trajectory, (p, pap, rs)))
        p = r + beta * p
        return (k + 1, x, r, p, rs_new, *trajectory)

    _, x, r, _, rs, *trajectory = tf.while_loop(
        lambda *_: True, body, (0, x, r, p, rs, *trajectory), maximum_iterations=iterations
    )
    if not record:
        return x
    directions, curvatures, residuals = (array.stack() for array in trajectory)
    return x, CGTrajectory(directions, curvatures, residuals, rs, r, floor)


class CGTrajectory(NamedTuple):
    """What reverse-mode differentiation of K CG steps needs (per image and channel)."""

    # shapes for image-shaped vectors; on rows (see _operator) (B, H, W, C) is (B·C, H·W), (B, 1, 1, C) is (B·C, 1)
    directions: tf.Tensor  # (K, B, H, W, C): p_k
    curvatures: tf.Tensor  # (K, B, 1, 1, C): <p_k, A p_k>
    residuals: tf.Tensor  # (K, B, 1, 1, C): <r_k, r_k>
    last_residual: tf.Tensor  # (B, 1, 1, C): <r_K, r_K>
    residual: tf.Tensor  # (B, H, W, C): r_K
    floor: tf.Tensor  # (B, 1, 1, C): the freezing threshold on <r, r>


def conjugate_gradient_vjp(matvec, b: tf.Tensor, g: tf.Tensor, trajectory: CGTrajectory) -> tf.Tensor:
    """g -> (dx/db)^T g for x = conjugate_gradient(matvec, b, K), by reverse-mode through the recorded steps.

    The exact gradient of the truncated solve (what autodiff through the iterations gives), written by hand
    so that the forward pass need not be re-run: per step it costs two products with A (A symmetric) and
    three inner products. The residuals r_k are recovered backwards from r_K by r_k = r_{k+1} + a_k A p_k.
    Frozen columns (step and beta forced to 0 by the guards) pass no gradient through those scalars, as in
    :func:`~smoothadv_tf.numerics.safe_div`.
    """
    t = trajectory
    iterations = t.directions.shape[0]

    def direction(k):
        # Loaded once per step into the loop state: XLA's CPU code for a stencil or an inner product that
        # reads a dynamic slice of the stack directly was 2x slower than the whole step.
        return tf.gather(t.directions, tf.maximum(k, 0))

    def body(k, p, r_next, rs_next, r_bar_next, p_bar_next, rs_bar_next):
        # Forward step k: q = A p; a = rs/<p,q>; x += a p; r' = r - a q; rs' = <r',r'>; beta = rs'/rs; p' = r' + beta p
        pq, rs = tf.gather(t.curvatures, k), tf.gather(t.residuals, k)
        active = rs > t.floor
        active_beta = active & (rs_next > t.floor)
        step = safe_div(rs, pq, active)
        beta = safe_div(rs_next, rs, active_beta)
        q = matvec(p)
        beta_bar = _dot(p_bar_next, p)
        rs_bar_total = rs_bar_next + safe_div(beta_bar, rs, active_beta)  # all uses of rs' = <r', r'>
        rs_bar = -safe_div(beta_bar * beta, rs, active_beta)
        r_bar = r_bar_next + p_bar_next + 2.0 * rs_bar_total * r_next
        step_bar = _dot(g, p) - _dot(r_bar, q)
        rs_bar += safe_div(step_bar, pq, active)
        pq_bar = -safe_div(step_bar * step, pq, active)
        # p_bar = beta p_bar' + a g + pq_bar q + A(pq_bar p - a r_bar), and A p = q
        p_bar = beta * p_bar_next + step * g + 2.0 * pq_bar * q - step * matvec(r_bar)
        r = r_next + step * q
        return k - 1, direction(k - 1), r, rs, r_bar, p_bar, rs_bar

    zeros = tf.zeros_like(b)
    last = iterations - 1
    state = (last, direction(last), t.residual, t.last_residual, zeros, zeros, tf.zeros_like(t.last_residual))
    _, _, _, _, r_bar, p_bar, rs_bar = tf.while_loop(lambda *_: True, body, state, maximum_iterations=iterations)
    return r_bar + p_bar + 2.0 * rs_bar * b  # r_0 = p_0 = b, rs_0 = <b, b>


def chebyshev(matvec, b: tf.Tensor, alpha: float, iterations: int) -> tf.Tensor:
    """Solve (I - α𝒲) x = b by `iterations` Chebyshev steps from x = 0, where matvec(v) = (I - α𝒲) v.

    The eigenvalues lie in [1 - α, 1 + α] (centre d = 1, half-width c = α), so with σ = d / c = 1/α the
    classic three-term recurrence (Saad, *Iterative Methods for Sparse Linear Systems*, Alg. 12.1) needs no
    inner product: x_k = p_k(A) b with 1 - λ p_k(λ) = T_k((1 - λ)/α) / T_k(1/α), hence a relative error of at
    most 1 / T_k(1/α) for every b, and a map linear in b (its transpose is itself: A is symmetric).
    """
    sigma = 1.0 / alpha
    rho = alpha  # 1 / σ
    delta = b  # the first step, b / d
    x = delta
    r = b - matvec(delta)

    def body(rho, x, r, delta):
        rho_next = 1.0 / (2.0 * sigma - rho)
        delta = (rho_next * rho) * delta + (2.0 * rho_next / alpha) * r
        return rho_next, x + delta, r - matvec(delta), delta

    if iterations > 1:
        rho = tf.constant(rho, b.dtype)
        _, x, _, _ = tf.while_loop(lambda *_: True, body, (rho, x, r, delta), maximum_iterations=iterations - 1)
    return x


def chebyshev_iterations(alpha: float, tol: float = AUTO_TOLERANCE) -> int:
    """Chebyshev steps after which s_α(z)'s relative error is at most `tol` for every z: the smallest k with
    T_k(1/α) >= 1/tol, i.e. k = ⌈acosh(1/tol) / acosh(1/α)⌉ (45 at α = 0.95 and tol = 1e-6, 38 at 1e-5)."""
    if alpha == 0.0:
        return 1
    return max(1, math.ceil(math.acosh(1.0 / tol) / math.acosh(1.0 / alpha)))


def apply_laplacian(normalized: tf.Tensor, offsets, alpha: float, v: tf.Tensor) -> tf.Tensor:
    """v -> L_α v = (v - α 𝒲 v) / (1 - α), with 𝒲 in stencil form."""
    return (v - alpha * stencil_apply(normalized, offsets, v)) / (1.0 - alpha)


def _operator(normalized: tf.Tensor, offsets, shape) -> tuple[tf.Tensor, tuple]:
    """𝒲 in the form the compiled solves apply it to v of `shape` (B, H, W, C): (coefficients, structure).

    With several channels (and a static shape) the solves run on *rows*: v as (B·C, H·W), one row per image
    and channel (a CG column), and 𝒲 v is 2K shifts of each row, each times a coefficient array built once per
    solve (both directions of each edge, repeated over a joint graph's channels): structure ("rows", steps),
    coefficients (2K, B·C, H·W). The image-shaped stencil (graph.stencil_apply) vectorises badly along a minor
    channel axis of 3. Measured per value and Chebyshev / CG iteration, rows against stencil (2-core AVX-512
    Xeon): 16x16x3 1.3 / 2.1 ns against 4.0 / 1.9; 64x64x3 0.8 / 2.3 against 2.4 / 2.0; 128x128x3 0.9 / 2.2
    against 2.8 / 3.9. With one channel the stencil is as fast or faster (28x28x1 1.1 / 2.1 ns either way;
    299x299x1 1.0 / 1.9 against 1.7 / 3.3 as rows), so it stays: ("stencil", offsets) and `normalized` itself,
    also for an unknown shape. A large image's chunks are single channels (see _chunks). Rows are formed once
    per solve (a layout change inside the loop cost as much as the gain), and the coefficients in their own
    compiled call (built inside the solve, XLA sinks them into the iterations). No wrap-around: a coefficient
    is 0 wherever its neighbour is outside the image (graph.image_graph), so a shift past a row's end adds
    nothing.
    """
    if None in tuple(shape) or shape[-1] == 1:
        return normalized, ("stencil", tuple(offsets))
    width = shape[2]
    steps = [s for dy, dx in offsets for s in (dy * width + dx, -(dy * width + dx))]
    return _row_coefficients(normalized, tuple(offsets), tuple(shape)), ("rows", tuple(steps))


@tf.function(jit_compile=True)  # its own compiled call: its outputs are materialised, not sunk into a loop
def _row_coefficients(normalized, offsets, shape):
    coeffs = []
    for k, (dy, dx) in enumerate(offsets):
        forward = normalized[:, :, :, k, :]  # w(p, p + o), stored at p
        backward = shift(forward, -dy, -dx)  # w(p - o, p) = w(p, p - o), moved to p
        coeffs += [_to_rows(tf.broadcast_to(forward, shape)), _to_rows(tf.broadcast_to(backward, shape))]
    return tf.stack(coeffs)


def _to_rows(v: tf.Tensor) -> tf.Tensor:
    """(B, H, W, C) -> (B·C, H·W): one row per image and channel."""
    b, h, w, c = v.shape
    if c == 1:
        return tf.reshape(v, (b, h * w))
    return tf.reshape(tf.transpose(tf.reshape(v, (b, h * w, c)), (0, 2, 1)), (b * c, h * w))


def _from_rows(v: tf.Tensor, shape) -> tf.Tensor:
    """Inverse of :func:`_to_rows`."""
    b, h, w, c = shape
    if c == 1:
        return tf.reshape(v, shape)
    return tf.reshape(tf.transpose(tf.reshape(v, (b, c, h * w)), (0, 2, 1)), shape)


def _shift_row(v: tf.Tensor, step: int) -> tf.Tensor:
    """u[:, i] = v[:, i + step] on (R, P) rows, zero past either end."""
    if step > 0:
        return tf.pad(v[:, step:], [[0, 0], [0, step]])
    return tf.pad(v[:, : v.shape[1] + step], [[0, 0], [-step, 0]])


def _matvec(coeffs: tf.Tensor, structure: tuple, alpha: float, laplacian: bool = True):
    """v -> L_α v (or, with ``laplacian=False``, (I - α𝒲) v), 𝒲 given by :func:`_operator` (v as rows, or
    image-shaped for a "stencil" structure)."""
    kind, layout = structure
    if kind == "stencil" and laplacian:
        return lambda v: apply_laplacian(coeffs, layout, alpha, v)
    if kind == "stencil":
        return lambda v: v - alpha * stencil_apply(coeffs, layout, v)
    scale = 1.0 / (1.0 - alpha) if laplacian else 1.0

    def matvec(v):
        smoothed = coeffs[0] * _shift_row(v, layout[0])
        for k in range(1, len(layout)):
            smoothed += coeffs[k] * _shift_row(v, layout[k])
        return (v - alpha * smoothed) * scale

    return matvec


# XLA fuses the shifts and the CG vector updates into a few loops (~4x faster than plain TF on CPU). Only
# the solve is compiled: models around it keep TF's own kernels (XLA's CPU convolutions are much slower).
@tf.function(jit_compile=True)
def _solve_laplacian(coeffs, structure, b, alpha, iterations, tol, method="cg", record=False):
    rows = structure[0] == "rows"
    v = _to_rows(b) if rows else b
    if method == "chebyshev":  # on I - α𝒲 = (1 - α) L_α: the same x for right-hand side (1 - α) b
        x = chebyshev(_matvec(coeffs, structure, alpha, laplacian=False), (1.0 - alpha) * v, alpha, iterations)
        return _from_rows(x, b.shape) if rows else x
    out = conjugate_gradient(_matvec(coeffs, structure, alpha), v, iterations, tol, record)
    if not rows:
        return out
    if record:
        return _from_rows(out[0], b.shape), out[1]
    return _from_rows(out, b.shape)


# Autodiff through the CG iterations, by hand: a while loop's saved intermediates cannot leave an XLA
# function, so the forward pass returns its trajectory explicitly and this reverse pass consumes it.
@tf.function(jit_compile=True)
def _cg_laplacian_vjp(coeffs, structure, b, g, trajectory, alpha):
    matvec = _matvec(coeffs, structure, alpha)
    if structure[0] != "rows":
        return conjugate_gradient_vjp(matvec, b, g, trajectory)
    return _from_rows(conjugate_gradient_vjp(matvec, _to_rows(b), _to_rows(g), trajectory), b.shape)


def _chunks(shape: tf.TensorShape, chunk_elements: int) -> list[tuple[slice, list[slice]]]:
    """Split a (B, H, W, C) batch into pieces of about chunk_elements values: runs of whole images, or, for a
    large image, runs of its channels (CG columns are independent per image and channel). Returns
    [(image slice, [channel slices])]; one piece if the shape is unknown."""
    batch, channels = shape[0], shape[-1]
    pixels = shape[1:3].num_elements()
    if batch is None or channels is None or pixels is None:
        return [(slice(None), [slice(None)])]
    if pixels * channels <= chunk_elements:
        size = chunk_elements // (pixels * channels)
        return [(slice(i, i + size), [slice(None)]) for i in range(0, batch, size)]
    size = max(1, chunk_elements // pixels)
    channel_runs = [slice(c, c + size) for c in range(0, channels, size)]
    return [(slice(i, i + 1), channel_runs) for i in range(batch)]


def _pieces(normalized, tensors, chunks):
    """Yield (normalized, *tensors) restricted to each piece of `chunks` (from :func:`_chunks`), in order."""
    for images, channel_runs in chunks:
        for channels in channel_runs:
            coeffs = normalized[images] if normalized.shape[-1] == 1 else normalized[images][..., channels]
            yield (coeffs, *[t[images][..., channels] for t in tensors])


def _reassemble(parts, chunks):
    """Inverse of the split: concatenate channel runs, then image runs."""
    parts = iter(parts)
    return tf.concat([tf.concat([next(parts) for _ in runs], -1) for _, runs in chunks], 0)


# A batch is solved in chunks (one image, or one channel of a large image), one compiled call each, inside
# one graph: TF runs the calls concurrently, one per core, and each chunk's CG vectors stay in the CPU cache.
# One call for a whole batch streams every vector through main memory: 2x slower per image at 16 x 299x299x3,
# and 1.4x slower for a single 299x299x3 image, whose one call runs its loops on both cores.
@tf.function
def _solve_in_chunks(normalized, b, alpha, offsets, iterations, tol, chunk_elements, record=False, method="cg"):
    """s_α for the whole batch by `method` ("cg" or "chebyshev"); with ``record`` (CG), also one CG trajectory
    per chunk."""
    chunks = _chunks(b.shape, chunk_elements)
    outs = [
        _solve_laplacian(*_operator(coeffs, offsets, piece.shape), piece, alpha, iterations, tol, method, record)
        for coeffs, piece in _pieces(normalized, [b], chunks)
    ]
    if not record:
        return _reassemble(outs, chunks)
    return _reassemble([x for x, _ in outs], chunks), [trajectory for _, trajectory in outs]


@tf.function
def _vjp_in_chunks(normalized, b, g, trajectories, alpha, offsets, chunk_elements):
    chunks = _chunks(b.shape, chunk_elements)
    pieces = _pieces(normalized, [b, g], chunks)
    grads = []
    for (coeffs, b_, g_), trajectory in zip(pieces, trajectories):
        grads.append(_cg_laplacian_vjp(*_operator(coeffs, offsets, b_.shape), b_, g_, trajectory, alpha))
    return _reassemble(grads, chunks)


def check_smoother_options(alpha: float, solver: str, iterations: int, gradient: str, tol: float = 0.0) -> None:
    """Raise ValueError for options :class:`Smoother` does not take (before any guide image is at hand): α of
    L_α (§3) a number in [0, 1) (at α = 1, L_α's 1/(1 - α) is infinite), a whole iteration count >= 1, the
    named solver and gradient, a tolerance >= 0."""
    real = isinstance(alpha, numbers.Real) and not isinstance(alpha, bool)
    if not real or not 0.0 <= alpha < 1.0:
        raise ValueError(f"alpha={alpha!r}: must be a number in [0, 1)")
    if solver not in SOLVERS:
        raise ValueError(f"solver={solver!r}: expected one of {', '.join(map(repr, SOLVERS))}")
    if gradient not in ("autodiff", "implicit"):
        raise ValueError(f"gradient={gradient!r}: expected 'autodiff' or 'implicit'")
    whole = isinstance(iterations, numbers.Real) and not isinstance(iterations, bool) and math.isfinite(iterations)
    if not whole or not float(iterations).is_integer() or iterations < 1:
        raise ValueError(f"iterations={iterations!r}: must be a whole number >= 1")
    if not isinstance(tol, numbers.Real) or not (math.isfinite(tol) and tol >= 0):
        raise ValueError(f"tol={tol!r}: must be a number >= 0")


# ------------------------------------------------------------------------------------------- cost model
# Seconds, fitted (non-negative least squares on relative errors) by `python scripts/bench_smoothing.py
# --crossover` on a 2-core Xeon (AVX-512) to set-up + 20 solves of 20 real photos at sides 4 to 32, which it
# prints beside the model's predictions and choices:
# - one Chebyshev iteration of a batch: CHEB_VALUE_S per value (pixel x channel) + CHEB_STEP_S per loop step;
# - dense set-up per image and channel group: DENSE_FACTOR_S per n³ (Cholesky of an n x n matrix) plus
#   DENSE_STENCIL_S per n² (the matrix assembled from the stencil) plus DENSE_SETUP_S;
# - one dense solve per image and channel group: DENSE_SOLVE_S per n² (two triangular solves stream the
#   factor from memory, whatever the channel count) + DENSE_CALL_S.
# There (20 colour photos, 20 solves) dense is faster up to 6x6 and Chebyshev from 14x14 in both measurement
# and model; between, the two measured within 15 % of each other and the model's crossover (13x13) is late by
# up to 11 %. With one channel (Fashion-MNIST) a Chebyshev solve costs a third and wins from 6x6.
COST_MODEL = {
    "CHEB_VALUE_S": 1.07e-9,
    "CHEB_STEP_S": 6.5e-7,
    "DENSE_FACTOR_S": 1.58e-12,
    "DENSE_STENCIL_S": 8.3e-9,
    "DENSE_SETUP_S": 2.26e-5,
    "DENSE_SOLVE_S": 3.76e-10,
    "DENSE_CALL_S": 1.91e-6,
}
# What an ŝ_α is applied to when the caller does not say (solver="auto" in Smoother / LaplacianSmoothing).
DEFAULT_APPLICATIONS = 100


def predicted_seconds(solver: str, shape, alpha: float, applications: int, groups: int = 1, cost=None) -> float:
    """Predicted seconds per image of ŝ_α with `solver` ("chebyshev" at the iterations of AUTO_TOLERANCE, or
    "dense") guided by a batch of `shape` (B, H, W, C): its set-up (s_α(1), and a factorisation for dense) plus
    `applications` solves (a forward and a backward pass count two). `groups`: channel groups of the graph
    (1 joint, C per channel)."""
    cost = COST_MODEL if cost is None else cost
    batch, height, width, channels = (int(d) for d in shape)
    n = height * width
    solves = applications + 1  # + s_α(1)
    if solver == "chebyshev":
        step = cost["CHEB_VALUE_S"] * n * channels + cost["CHEB_STEP_S"] / batch
        return solves * chebyshev_iterations(alpha) * step
    if solver == "dense":
        setup = groups * (cost["DENSE_FACTOR_S"] * n**3 + cost["DENSE_STENCIL_S"] * n**2 + cost["DENSE_SETUP_S"])
        return setup + solves * groups * (cost["DENSE_SOLVE_S"] * n**2 + cost["DENSE_CALL_S"])
    raise ValueError(f"solver={solver!r}: the cost model covers 'chebyshev' and 'dense'")


def resolve_solver(shape, alpha: float, applications: int = DEFAULT_APPLICATIONS, mode: str = "joint", cost=None):
    """(solver, iterations) that ``solver="auto"`` runs for guides of `shape` (B, H, W, C) and `applications`
    solves per image: the exact dense solve or Chebyshev at :func:`chebyshev_iterations` (error <=
    AUTO_TOLERANCE), whichever :func:`predicted_seconds` says is faster (dense only up to DENSE_MAX_PIXELS)."""
    iterations = chebyshev_iterations(alpha)
    if alpha == 0.0 or None in tuple(shape) or shape[1] * shape[2] > DENSE_MAX_PIXELS:
        return "chebyshev", iterations
    groups = 1 if mode == "joint" else int(shape[3])
    costs = {s: predicted_seconds(s, shape, alpha, applications, groups, cost) for s in ("dense", "chebyshev")}
    solver = min(costs, key=costs.get)
    return solver, iterations


# ---------------------------------------------------------------------------------------------- set-up
class SmoothingSetup(NamedTuple):
    """What ŝ_α needs of its guide images, per image (first axis): computed once, reused for every solve."""

    normalized: tf.Tensor  # (B, H, W, K, G): 𝒲 in stencil form (graph.ImageGraph.normalized)
    normaliser: tf.Tensor  # (B, H, W, G or C): s_α(1), floored at MIN_NORMALISER (eq. 9)
    factor: tf.Tensor | None = None  # (B, G, n, n): Cholesky factor of I - α𝒲 (solver="dense" only)


_GRAPH_SIGNATURE = inspect.signature(image_graph)


def _graph_key(graph_options: dict) -> tuple:
    """image_graph's options with its defaults filled in, as a hashable tuple (TypeError for an unknown one)."""
    bound = _GRAPH_SIGNATURE.bind(None, **graph_options)
    bound.apply_defaults()
    return tuple((k, v) for k, v in bound.arguments.items() if k != "x_o")


class SetupCache:
    """Per-image set-ups keyed by (image bytes, options), least recently used first out once their bytes pass
    `max_bytes` (default 256 MiB: ~28,000 28x28 images, ~250 299x299 ones). `computed` counts the images whose
    set-up was built, `reused` those served from the cache."""

    def __init__(self, max_bytes: int = 256 * 2**20):
        self.max_bytes = int(max_bytes)
        self._entries: OrderedDict = OrderedDict()
        self.bytes = 0
        self.computed = 0
        self.reused = 0

    def clear(self) -> None:
        """Forget every set-up (the counters too)."""
        self._entries.clear()
        self.bytes = self.computed = self.reused = 0

    def __len__(self) -> int:
        return len(self._entries)

    def get(self, key):
        """The arrays stored under `key` (now the most recently used), or None."""
        entry = self._entries.get(key)
        if entry is not None:
            self._entries.move_to_end(key)
        return entry

    def put(self, key, arrays: tuple) -> None:
        """Store a set-up's arrays under `key`, evicting the least recently used beyond `max_bytes`; a set-up
        larger than `max_bytes` on its own is not kept."""
        size = sum(a.nbytes for a in arrays)
        if size > self.max_bytes:
            return
        old = self._entries.pop(key, None)
        if old is not None:
            self.bytes -= sum(a.nbytes for a in old)
        self._entries[key] = arrays
        self.bytes += size
        while self.bytes > self.max_bytes:
            _, evicted = self._entries.popitem(last=False)
            self.bytes -= sum(a.nbytes for a in evicted)


SETUP_CACHE = SetupCache()
# Memory of one dense set-up build: 𝒲 assembled column by column, I - α𝒲 and its factor (n x n each, per image
# and channel group); smoothing_setup builds that many images at a time that these fit in SETUP_GROUP_BYTES.
DENSE_BUILD_MATRICES = 4
SETUP_GROUP_BYTES = 2**30


def smoothing_setup(
    x_o, alpha: float = 0.95, solver: str = "cg", iterations: int = 50, tol: float = 0.0, **graph_options
) -> SmoothingSetup:
    """The :class:`SmoothingSetup` of guide images x_o (B, H, W, C): per image from :data:`SETUP_CACHE` when
    the same image (same bytes) was set up with the same options before, the others built in one batch and
    cached. Needs x_o's value (eager); inside a traced function, use ``Smoother``, which builds it in the graph.
    `solver` is "cg", "chebyshev" or "dense" (resolve "auto" first: :func:`resolve_solver`)."""
    arrays = setup_arrays(x_o, alpha, solver, iterations, tol, **graph_options)
    return SmoothingSetup(*[tf.constant(a) for a in arrays])


def setup_arrays(x_o, alpha: float, solver: str, iterations: int, tol: float = 0.0, **graph_options) -> tuple:
    """:func:`smoothing_setup` as NumPy arrays (the fields that are not None, in order), for a caller that
    hands them on per image (the attacks pad and split them with their batch)."""
    x_o = check_guide(x_o)
    images = x_o.numpy()
    options = (float(alpha), solver, int(iterations), float(tol), _graph_key(graph_options))
    keys = [(hashlib.sha1(image.tobytes()).digest(), image.shape, options) for image in images]
    found = [SETUP_CACHE.get(key) for key in keys]
    missing = [i for i, entry in enumerate(found) if entry is None]
    SETUP_CACHE.reused += len(images) - len(missing)
    if missing:
        group = len(missing)
        if solver == "dense":  # its n x n matrices: build a few images at a time, at most SETUP_GROUP_BYTES
            group = max(1, SETUP_GROUP_BYTES // (DENSE_BUILD_MATRICES * 4 * int(np.prod(images.shape[1:3])) ** 2))
        parts = [
            _build_missing(tf.gather(x_o, missing[i : i + group]), alpha, solver, iterations, tol, graph_options)
            for i in range(0, len(missing), group)
        ]
        arrays = [np.concatenate([t.numpy() for t in ts]) for ts in zip(*parts) if ts[0] is not None]
        SETUP_CACHE.computed += len(missing)
        for j, i in enumerate(missing):
            found[i] = tuple(np.array(a[j]) for a in arrays)  # a copy: a view would pin the whole batch
            SETUP_CACHE.put(keys[i], found[i])
    return tuple(np.stack(parts) for parts in zip(*found))


def _build_missing(x_o, alpha, solver, iterations, tol, graph_options) -> SmoothingSetup:
    """The set-up of concrete guides x_o, for the cache: traced once per batch shape and options for the
    iterative solvers (built eagerly, the image graph alone is ~40 small ops: 7.4 ms for 64 28x28 images, the
    whole set-up 13.8 ms, half of what smoothing adds to a 3-step training batch), eagerly for dense (tiny
    images, few calls)."""
    if solver == "dense" or alpha == 0.0:
        return _build_setup(x_o, alpha, solver, iterations, tol, graph_options)
    return _traced_setup(x_o, float(alpha), solver, int(iterations), float(tol), _graph_key(graph_options))


@tf.function
def _traced_setup(x_o, alpha, solver, iterations, tol, graph_key):
    return _build_setup(x_o, alpha, solver, iterations, tol, dict(graph_key))


def _build_setup(x_o, alpha, solver, iterations, tol, graph_options) -> SmoothingSetup:
    """The set-up of guides x_o as TensorFlow ops (eager or in a graph)."""
    graph = image_graph(x_o, **graph_options)
    ones = tf.ones_like(x_o[..., :1]) if graph.mode == "joint" else tf.ones_like(x_o)
    factor = None
    if alpha == 0.0:
        normaliser = ones
    elif solver == "dense":
        factor = _dense_factor(graph, alpha, x_o.shape)
        normaliser = _dense_solve(factor, ones, alpha)
    else:
        method = "chebyshev" if solver == "chebyshev" else "cg"
        normaliser = _solve_in_chunks(
            graph.normalized, ones, alpha, graph.offsets, iterations, tol, CHUNK_ELEMENTS, method=method
        )
    return SmoothingSetup(graph.normalized, tf.maximum(normaliser, MIN_NORMALISER), factor)


def _dense_factor(graph: ImageGraph, alpha: float, shape) -> tf.Tensor:
    """Cholesky factors (B, G, n, n) of I - α𝒲 (symmetric positive-definite: eigenvalues in [1 - α, 1 + α])."""
    b, h, w = shape[0], shape[1], shape[2]
    if b is None:
        raise ValueError("solver='dense' needs a static batch size")
    n = h * w
    if n > DENSE_MAX_PIXELS:
        raise ValueError(f"solver='dense': {n} pixels is over {DENSE_MAX_PIXELS}; use solver='cg' or 'chebyshev'")
    g = graph.normalized.shape[-1]
    # Columns of 𝒲 for all images and channel groups at once: apply the stencil to the identity basis,
    # with (image, group) moved to the channel axis, which broadcasts against the n basis images.
    coeffs = tf.transpose(graph.normalized, (4, 1, 2, 3, 0))  # (G, H, W, K, B)
    coeffs = tf.reshape(tf.transpose(coeffs, (1, 2, 3, 4, 0)), (1, h, w, len(graph.offsets), b * g))
    basis = tf.reshape(tf.eye(n, dtype=tf.float32), (n, h, w, 1))
    cols = tf.reshape(stencil_apply(coeffs, graph.offsets, basis), (n, n, b, g))  # [j, i, b, g] = 𝒲_b,g[i, j]
    w_mats = tf.transpose(cols, (2, 3, 1, 0))  # (B, G, n, n)
    return tf.linalg.cholesky(tf.eye(n) - alpha * w_mats)


def _dense_solve(factor: tf.Tensor, z: tf.Tensor, alpha: float) -> tf.Tensor:
    """s_α(z) = (1 - α) (I - α𝒲)^-1 z by two triangular solves per image and channel group; z (B, H, W, C)."""
    b, h, w, c = z.shape
    g = factor.shape[1]
    # (B, G, n, C / G): the channels sharing a graph are the right-hand sides of one solve
    rhs = tf.transpose(tf.reshape(z, (b, h * w, g, c // g)), (0, 2, 1, 3))
    x = (1.0 - alpha) * tf.linalg.cholesky_solve(factor, rhs)
    return tf.reshape(tf.transpose(x, (0, 2, 1, 3)), (b, h, w, c))


# -------------------------------------------------------------------------------------------- smoother
class Smoother:
    """ŝ_α guided by a batch of images x_o (B, H, W, C): ``smoother(z)`` = ŝ_α(z), ``smoother.solve(z)`` = s_α(z).

    Works eagerly and inside ``tf.function``; z must have x_o's shape. ``graph_options`` go to
    :func:`smoothadv_tf.graph.image_graph` (neighbors, kernel, sigma, mode). With ``solver="auto"`` the solver
    and its iterations come from :func:`resolve_solver` for `applications` solves per image (`iterations` and
    `tol` are then its own). The set-up comes from `setup` when given (a :class:`SmoothingSetup` or its tuple),
    else from :data:`SETUP_CACHE` when x_o's value is known (eager), else it is built in the graph.
    """

    def __init__(
        self,
        x_o,
        alpha: float = 0.95,
        solver: str = "cg",
        iterations: int = 50,
        gradient: str = "autodiff",
        tol: float = 0.0,
        setup=None,
        applications: int = DEFAULT_APPLICATIONS,
        **graph_options,
    ):
        check_smoother_options(alpha, solver, iterations, gradient, tol)
        self.x_o = check_guide(x_o)
        self.alpha = float(alpha)
        self.shape = self.x_o.shape
        self.graph_options = graph_options
        graph_key = dict(_graph_key(graph_options))
        check_graph_options(**graph_key)
        self.offsets = HALF_OFFSETS[graph_key["neighbors"]]
        if solver == "auto":
            solver, iterations = resolve_solver(
                self.shape, self.alpha, applications, graph_options.get("mode", "joint")
            )
            tol = 0.0
        elif solver == "chebyshev" and tol > 0:  # its error bound gives the steps a tolerance needs
            iterations = min(int(iterations), chebyshev_iterations(self.alpha, tol))
        self.solver = solver
        self.iterations = int(iterations)
        self.gradient = gradient
        self.tol = float(tol)
        options = (self.alpha, solver, self.iterations, self.tol)
        if setup is not None:
            setup = SmoothingSetup(*setup)
            if solver == "dense" and setup.factor is None and self.alpha != 0.0:
                raise ValueError(
                    "setup: solver='dense' needs the factor of its set-up (SmoothingSetup.factor); this one was built "
                    "for another solver"
                )
        elif tf.executing_eagerly():
            setup = smoothing_setup(self.x_o, *options, **graph_options)
        else:
            setup = _build_setup(self.x_o, *options, graph_options)
        self.setup = setup
        self._normalized, self._normaliser = setup.normalized, setup.normaliser

    @property
    def graph(self) -> ImageGraph:
        """The guide's graph (eq. 5), built on first use (the solves need only the set-up)."""
        if getattr(self, "_graph", None) is None:
            self._graph = image_graph(self.x_o, **self.graph_options)
        return self._graph

    # -------------------------------------------------------------------------------------------- helpers
    def laplacian(self, v: tf.Tensor) -> tf.Tensor:
        """v -> L_α v."""
        if self.alpha == 0.0:
            return v
        return apply_laplacian(self._normalized, self.offsets, self.alpha, v)

    def _solve_once(self, b: tf.Tensor, record: bool = False):
        if self.solver == "dense":
            return _dense_solve(self.setup.factor, b, self.alpha)
        method = "chebyshev" if self.solver == "chebyshev" else "cg"
        return _solve_in_chunks(
            self._normalized,
            b,
            self.alpha,
            self.offsets,
            self.iterations,
            self.tol,
            CHUNK_ELEMENTS,
            record=record,
            method=method,
        )

    def _check(self, z) -> tf.Tensor:
        z = tf.convert_to_tensor(z, tf.float32)
        if z.shape.rank != 4:
            raise ValueError(f"z: expected a 4-D NHWC tensor, got shape {z.shape}")
        if not z.shape[1:].is_compatible_with(self.shape[1:]) or not z.shape[:1].is_compatible_with(self.shape[:1]):
            raise ValueError(f"z: shape {z.shape} does not match the guide image shape {self.shape}")
        return z

    def _linear_solve(self, z: tf.Tensor) -> tf.Tensor:
        """A solve that is a fixed linear map of z whose transpose is itself (dense, Chebyshev, or CG with the
        implicit gradient): the backward pass is another solve."""

        @tf.custom_gradient
        def solve(b):
            x = self._solve_once(tf.stop_gradient(b))

            def grad(g):
                return self._solve_once(g)

            return x, grad

        return solve(z)

    def _solve(self, z: tf.Tensor, stop_gradient: bool) -> tf.Tensor:
        if self.alpha == 0.0:
            return tf.stop_gradient(z) if stop_gradient else z
        if stop_gradient:
            return self._solve_once(tf.stop_gradient(z))
        if self.solver != "cg" or self.gradient == "implicit":
            return self._linear_solve(z)
        x = self._autodiff_solve(z)
        # CG is homogeneous, not linear, in z, and at z = 0 its iterations are frozen (nothing to solve),
        # so autodiff gives 0 there. sC&W starts at z = 0 (eq. 18), so for exactly-zero columns route the
        # gradient through the adjoint solve instead: the derivative of the linear map L_α^-1.
        zero = tf.reduce_all(tf.equal(z, 0.0), axis=[1, 2], keepdims=True)
        return tf.where(zero, self._zero_with_adjoint_gradient(z, zero), x)

    def _autodiff_solve(self, z: tf.Tensor) -> tf.Tensor:
        """The truncated CG solve, with the gradient of its iterations (the paper's choice).

        The forward pass records the K search directions (memory: K images' worth per image, 50 MB for a
        299x299x3 image at K = 50), which the hand-written reverse pass consumes.
        """
        normalized, offsets, alpha, chunks = self._normalized, self.offsets, self.alpha, CHUNK_ELEMENTS

        @tf.custom_gradient
        def solve(b):
            # stop_gradient: no tape may record through the compiled loop (its gradient is `grad` below)
            x, trajectories = self._solve_once(tf.stop_gradient(b), record=True)

            def grad(g):
                return _vjp_in_chunks(normalized, tf.stop_gradient(b), g, trajectories, alpha, offsets, chunks)

            return x, grad

        return solve(z)

    def _zero_with_adjoint_gradient(self, z: tf.Tensor, zero: tf.Tensor) -> tf.Tensor:
        """Value 0 (= L_α^-1 z where z = 0); gradient L_α^-1 g on the zero columns, computed only if any."""

        @tf.custom_gradient
        def zeros(b):
            def grad(g):
                return tf.cond(
                    tf.reduce_any(zero),
                    lambda: self._solve_once(g),
                    lambda: tf.zeros_like(g),
                )

            return tf.zeros_like(b), grad

        return zeros(z)

    # ------------------------------------------------------------------------------------------- public
    def solve(self, z, stop_gradient: bool = False) -> tf.Tensor:
        """s_α(z) = L_α^-1 z (eq. 8), unnormalised.

        ``stop_gradient=True``: no gradient flows to z, and autodiff mode records no trajectory (cheaper when
        the result is only used as a value, e.g. sPGD₂'s smoothed gradient).
        """
        return self._solve(self._check(z), stop_gradient)

    def __call__(self, z, stop_gradient: bool = False) -> tf.Tensor:
        """ŝ_α(z) = diag(s_α(1))^-1 s_α(z) (eq. 9). ``stop_gradient``: as in :meth:`solve`."""
        z = self._check(z)
        if self.alpha == 0.0:
            return tf.stop_gradient(z) if stop_gradient else z
        return self._solve(z, stop_gradient) / self._normaliser


def smoothness(r, x_o, **graph_options) -> tf.Tensor:
    """Normalised quadratic form rᵀ(I - 𝒲)r / rᵀr per image: lower = smoother along x_o's graph.

    It is (1/2) Σ_ij w_ij ||r̂_i - r̂_j||² / ||r||², the smoothness term of eq. (6) relative to the energy
    of r; it lies in [0, 2]. It is 0 only for r ∝ √degree (flat within each connected region of x_o), and a
    zero perturbation scores 0. For scale: Fashion-MNIST test images scored as their own r give 0.040 on
    average (0.007-0.268 over the first 1,000).
    """
    r = tf.convert_to_tensor(r, tf.float32)
    graph = image_graph(x_o, **graph_options)
    energy = tf.reduce_sum(r * r, axis=[1, 2, 3])
    quad = energy - tf.reduce_sum(r * graph.apply(r), axis=[1, 2, 3])
    return safe_div(quad, energy)  # a zero perturbation scores 0
