"""The decompositions network decoupling is judged against, as drop-in modules.

* **CP** (Lebedev et al. 2015): W ~ sum_r a_r (x) b_r (x) c_r (x) d_r, run as
  1x1 (M -> R), k x 1 depthwise, 1 x k depthwise, 1x1 (R -> N).  Fitted by CP-ALS
  (:func:`cp_als`: the algorithm of tensorly's ``parafac`` with products shaped for a
  conv kernel, seconds where tensorly took minutes on VGG-sized layers).
* **Tucker-2** (Kim et al. 2016): W ~ core x_out U x_in V, run as 1x1 (M -> R_in),
  k x k (R_in -> R_out), 1x1 (R_out -> N).  Fitted by tensorly's partial Tucker (HOOI).
* **Channel** (Zhang et al. 2016, the linear case): the N outputs of a conv live
  near an R-dimensional subspace, so run a k x k conv to R channels, then a 1x1
  back to N.  The subspace is the top principal directions of the layer's
  responses on calibration images, or (no data) of the filters themselves.
* **Spatial** (Jaderberg et al. 2014, scheme 2): W[n,m,y,x] ~ sum_r V[r,m,y] H[n,r,x],
  run as k x 1 (M -> R) then 1 x k (R -> N); the optimal V, H come from the SVD of W
  reshaped to (M k) x (N k), exact at R = min(M k, N k).

Each method has its fitted layers (``*_conv``), their untrained structure (``*_layers``, what a
saved file's weights fit), its mult-adds at a rank (``*_mult_adds``, so ranks can be chosen for
equal mult-adds across methods) and its highest useful rank (``*_max_rank``); ``methods.py``
registers them as conversion methods.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

__all__ = [
    "channel_conv", "channel_layers", "channel_max_rank", "channel_mult_adds",
    "cp_als", "cp_conv", "cp_layers", "cp_max_rank", "cp_mult_adds",
    "spatial_conv", "spatial_layers", "spatial_max_rank", "spatial_mult_adds",
    "tucker_conv", "tucker_layers", "tucker_max_rank", "tucker_mult_adds", "tucker_ranks",
]  # fmt: skip


def _pair(value) -> tuple[int, int]:
    return tuple(value) if isinstance(value, (tuple, list)) else (value, value)


def _tensorly():
    from ..extras import require

    tensorly = require("tensorly", "CP and Tucker", "decompose")
    tensorly.set_backend("pytorch")
    return tensorly


def _set(conv: nn.Conv2d, weight: Tensor, bias: Tensor | None = None) -> nn.Conv2d:
    with torch.no_grad():
        conv.weight.copy_(weight.reshape(conv.weight.shape).to(conv.weight.dtype))
        if bias is not None:
            conv.bias.copy_(bias)
    return conv


def _split_spatial(conv: nn.Conv2d) -> tuple[dict, dict]:
    """Stride/padding/dilation of a k x k conv split into its k x 1 and 1 x k parts."""
    (sh, sw), (ph, pw), (dh, dw) = _pair(conv.stride), _pair(conv.padding), _pair(conv.dilation)
    vertical = dict(stride=(sh, 1), padding=(ph, 0), dilation=(dh, 1))
    horizontal = dict(stride=(1, sw), padding=(0, pw), dilation=(1, dw))
    return vertical, horizontal


def _check(conv: nn.Conv2d) -> None:
    if conv.groups != 1:
        raise ValueError("only regular (groups=1) convolutions can be decomposed")
    if isinstance(conv.padding, str) or conv.padding_mode != "zeros":
        raise ValueError("the decompositions support numeric zero padding only")


def cp_max_rank(conv: nn.Conv2d) -> int:
    n, m = conv.weight.shape[:2]
    return n * m  # CP has no exactness bound that small; a generous ceiling


def tucker_max_rank(conv: nn.Conv2d) -> int:
    return max(conv.weight.shape[:2])  # the rank of the larger side; see tucker_ranks


def spatial_max_rank(conv: nn.Conv2d) -> int:
    n, m, kh, kw = conv.weight.shape
    return min(m * kh, n * kw)


def channel_max_rank(conv: nn.Conv2d) -> int:
    n, m, kh, kw = conv.weight.shape
    return min(n, m * kh * kw)


def cp_conv(conv: nn.Conv2d, rank: int, *, seed: int = 0, iterations: int = 25, tol: float = 1e-4) -> nn.Sequential:
    """CP at ``rank``, fitted by :func:`cp_als` (at most ``iterations`` sweeps, stopping once the
    relative fit error moves by less than ``tol``)."""
    _check(conv)
    weights, (out_f, in_f, v_f, h_f) = cp_als(conv.weight.detach(), rank, iterations=iterations, tol=tol, seed=seed)
    layers = cp_layers(conv, rank)
    _set(layers[0], in_f.T)
    _set(layers[1], v_f.T)
    _set(layers[2], h_f.T)
    _set(layers[3], out_f * weights[None, :], conv.bias)
    return layers


def _cp_start(target: Tensor, rank: int, seed: int) -> list[Tensor]:
    """Each factor's first columns are its unfolding's leading left singular vectors (tensorly's
    ``init="svd"``), the columns past the side's size random: fewer sweeps than a random start."""
    generator = torch.Generator().manual_seed(seed)
    factors = []
    for mode, size in enumerate(target.shape):
        unfolded = target.movedim(mode, 0).reshape(size, -1).double()
        # left singular vectors as eigenvectors of the small side's Gram (an SVD of the
        # 3 x 786,432 unfolding of a 512x512x3x3 kernel took seconds)
        values, vectors = torch.linalg.eigh(unfolded @ unfolded.T)
        left = vectors[:, values.argsort(descending=True)[:rank]]
        extra = torch.rand(size, rank - left.shape[1], generator=generator, dtype=torch.float64).to(left.device)
        factors.append(torch.cat([left, extra], 1).to(target.dtype))
    return factors


def _least_squares(grams: list[Tensor], skip: int, product: Tensor) -> tuple[Tensor, Tensor]:
    """One ALS update: the factor solving ``X (Hadamard of the other Grams) = product``, as unit
    columns and their norms (a tiny ridge: ranks above a side's size make the Gram singular)."""
    gram = torch.ones_like(grams[0])
    for other, g in enumerate(grams):
        if other != skip:
            gram = gram * g
    gram = gram + 1e-9 * gram.diagonal().mean() * torch.eye(len(gram), dtype=gram.dtype, device=gram.device)
    factor, failed = torch.linalg.cholesky_ex(gram)
    if failed:
        solved = torch.linalg.solve(gram, product.double().T).T
    else:
        solved = torch.cholesky_solve(product.double().T, factor).T
    norms = solved.norm(dim=0).clamp(min=1e-30)
    return solved / norms, norms


def cp_als(
    weight: Tensor, rank: int, *, iterations: int = 25, tol: float = 1e-4, seed: int = 0
) -> tuple[Tensor, list[Tensor]]:
    """CP decomposition of a (N, M, kh, kw) kernel by alternating least squares (the algorithm
    of tensorly's ``parafac``): returns the weights and the (N, R), (M, R), (kh, R), (kw, R)
    factors, columns of unit norm.  It stops after ``iterations`` sweeps or once the relative
    error ||W - W_cp|| / ||W|| changes by less than ``tol`` between sweeps.

    The products with the other factors are contracted channel side first - two
    (N M k^2) x R matrix products a sweep - instead of forming the (N M k) x R Khatri-Rao
    matrix of the generic algorithm (6.9 GB for one 512x512x3x3 conv at rank 1,100, which
    made tensorly's CP take minutes a layer)."""
    target = weight.detach().float()
    factors = _cp_start(target, rank, seed)
    grams = [(f.T @ f).double() for f in factors]
    norm2 = float(target.pow(2).sum())
    norms = torch.ones(rank, dtype=torch.float64, device=target.device)
    previous = None
    for _ in range(iterations):
        out_f, in_f, v_f, h_f = factors
        spatial = v_f[:, None, :] * h_f[None, :, :]  # (kh, kw, R)
        product = (torch.einsum("nmyx,mr->nyxr", target, in_f) * spatial).sum((1, 2))
        solved, norms = _least_squares(grams, 0, product)
        factors[0], grams[0] = solved.float(), solved.T @ solved
        by_input = torch.einsum("nmyx,nr->myxr", target, factors[0])  # shared by the three other modes
        solved, norms = _least_squares(grams, 1, (by_input * spatial).sum((1, 2)))
        factors[1], grams[1] = solved.float(), solved.T @ solved
        by_row = torch.einsum("myxr,mr->yxr", by_input, factors[1])
        solved, norms = _least_squares(grams, 2, (by_row * factors[3][None]).sum(1))
        factors[2], grams[2] = solved.float(), solved.T @ solved
        product = (by_row * factors[2][:, None]).sum(0)
        solved, norms = _least_squares(grams, 3, product)
        factors[3], grams[3] = solved.float(), solved.T @ solved
        # ||W - W_cp||^2 = ||W||^2 - 2 <W, W_cp> + ||W_cp||^2, from the last mode's product
        inner = float((product.double() * solved * norms).sum())
        gram = grams[0] * grams[1] * grams[2] * grams[3]
        error = (max(norm2 - 2 * inner + float(norms @ gram @ norms), 0.0) / max(norm2, 1e-30)) ** 0.5
        if previous is not None and abs(previous - error) < tol:
            break
        previous = error
    return norms.to(weight.dtype), [f.to(weight.dtype) for f in factors]


def cp_layers(conv: nn.Conv2d, rank: int) -> nn.Sequential:
    n, m, kh, kw = conv.weight.shape
    vertical, horizontal = _split_spatial(conv)
    return nn.Sequential(
        nn.Conv2d(m, rank, 1, bias=False),
        nn.Conv2d(rank, rank, (kh, 1), groups=rank, bias=False, **vertical),
        nn.Conv2d(rank, rank, (1, kw), groups=rank, bias=False, **horizontal),
        nn.Conv2d(rank, n, 1, bias=conv.bias is not None),
    ).to(conv.weight.device)


def tucker_ranks(conv: nn.Conv2d, rank: int) -> tuple[int, int]:
    """(input rank, output rank): ``rank`` for the larger side, the other in proportion."""
    n, m = conv.weight.shape[:2]
    scale = rank / max(n, m)
    return max(1, min(m, round(m * scale))), max(1, min(n, round(n * scale)))


def tucker_conv(conv: nn.Conv2d, rank: int, *, iterations: int = 50) -> nn.Sequential:
    _check(conv)
    from tensorly.decomposition import partial_tucker

    _tensorly()
    r_in, r_out = tucker_ranks(conv, rank)
    (core, (out_f, in_f)), _ = partial_tucker(
        conv.weight.detach().double(), rank=[r_out, r_in], modes=[0, 1], n_iter_max=iterations
    )
    layers = tucker_layers(conv, rank)
    _set(layers[0], in_f.T)
    _set(layers[1], core)
    _set(layers[2], out_f, conv.bias)
    return layers


def tucker_layers(conv: nn.Conv2d, rank: int) -> nn.Sequential:
    n, m, kh, kw = conv.weight.shape
    r_in, r_out = tucker_ranks(conv, rank)
    return nn.Sequential(
        nn.Conv2d(m, r_in, 1, bias=False),
        nn.Conv2d(r_in, r_out, (kh, kw), stride=conv.stride, padding=conv.padding, dilation=conv.dilation, bias=False),
        nn.Conv2d(r_out, n, 1, bias=conv.bias is not None),
    ).to(conv.weight.device)


def spatial_conv(conv: nn.Conv2d, rank: int) -> nn.Sequential:
    _check(conv)
    n, m, kh, kw = conv.weight.shape
    # A[(m, y), (n, x)] = W[n, m, y, x]
    a = conv.weight.detach().double().permute(1, 2, 0, 3).reshape(m * kh, n * kw)
    u, s, vh = torch.linalg.svd(a, full_matrices=False)
    root = s[:rank].sqrt()
    v = (u[:, :rank] * root).T.reshape(rank, m, kh, 1)  # vertical filters
    h = (vh[:rank].T * root).reshape(n, kw, rank).permute(0, 2, 1).reshape(n, rank, 1, kw)
    layers = spatial_layers(conv, rank)
    _set(layers[0], v)
    _set(layers[1], h, conv.bias)
    return layers


def spatial_layers(conv: nn.Conv2d, rank: int) -> nn.Sequential:
    n, m, kh, kw = conv.weight.shape
    vertical, horizontal = _split_spatial(conv)
    return nn.Sequential(
        nn.Conv2d(m, rank, (kh, 1), bias=False, **vertical),
        nn.Conv2d(rank, n, (1, kw), bias=conv.bias is not None, **horizontal),
    ).to(conv.weight.device)


def channel_conv(conv: nn.Conv2d, rank: int, moments: tuple[Tensor, Tensor] | None = None) -> nn.Sequential:
    """A k x k conv to ``rank`` channels, then a 1x1 back to the N outputs.

    ``moments`` = (mean, covariance) of the layer's responses without bias,
    measured on calibration images: the kept subspace is their top principal
    directions V, and the 1x1 conv adds back the mean of what is projected away
    (y ~ V V^T (y - mean) + mean).  Without them the filters' own top left
    singular vectors are used (the same thing for white inputs).  Exact at
    rank = min(N, M k^2).
    """
    _check(conv)
    n, m, kh, kw = conv.weight.shape
    weight = conv.weight.detach().double().reshape(n, -1)
    if moments is None:
        basis = torch.linalg.svd(weight, full_matrices=False)[0][:, :rank]
        offset = torch.zeros(n, dtype=torch.float64, device=weight.device)
    else:
        mean, covariance = (t.double().to(weight.device) for t in moments)
        eigenvalues, eigenvectors = torch.linalg.eigh(covariance)
        basis = eigenvectors[:, eigenvalues.argsort(descending=True)[:rank]]
        offset = mean - basis @ (basis.T @ mean)
    bias = offset if conv.bias is None else offset + conv.bias.detach().double()
    layers = channel_layers(conv, rank, calibrated=moments is not None)
    _set(layers[0], basis.T @ weight)
    _set(layers[1], basis, bias.to(conv.weight.dtype) if layers[1].bias is not None else None)
    return layers


def channel_layers(conv: nn.Conv2d, rank: int, *, calibrated: bool = False) -> nn.Sequential:
    # A calibrated subspace adds back the mean of what it projects away: a bias even where the conv had none.
    n, m, kh, kw = conv.weight.shape
    return nn.Sequential(
        nn.Conv2d(m, rank, (kh, kw), stride=conv.stride, padding=conv.padding, dilation=conv.dilation, bias=False),
        nn.Conv2d(rank, n, 1, bias=conv.bias is not None or calibrated),
    ).to(conv.weight.device)


def _pixels(in_hw: tuple[int, int], out_hw: tuple[int, int]) -> tuple[int, int, int]:
    """(input, output, after a k x 1 part) pixel counts; the last has the vertical stride only
    (approximate with padding)."""
    return in_hw[0] * in_hw[1], out_hw[0] * out_hw[1], out_hw[0] * in_hw[1]


def cp_mult_adds(conv: nn.Conv2d, rank: int, in_hw: tuple[int, int], out_hw: tuple[int, int]) -> int:
    n, m, kh, kw = conv.weight.shape
    in_px, out_px, mid_px = _pixels(in_hw, out_hw)
    return m * rank * in_px + kh * rank * mid_px + kw * rank * out_px + rank * n * out_px


def tucker_mult_adds(conv: nn.Conv2d, rank: int, in_hw: tuple[int, int], out_hw: tuple[int, int]) -> int:
    n, m, kh, kw = conv.weight.shape
    in_px, out_px, _ = _pixels(in_hw, out_hw)
    r_in, r_out = tucker_ranks(conv, rank)
    return m * r_in * in_px + kh * kw * r_in * r_out * out_px + r_out * n * out_px


def spatial_mult_adds(conv: nn.Conv2d, rank: int, in_hw: tuple[int, int], out_hw: tuple[int, int]) -> int:
    n, m, kh, kw = conv.weight.shape
    _, out_px, mid_px = _pixels(in_hw, out_hw)
    return kh * m * rank * mid_px + kw * rank * n * out_px


def channel_mult_adds(conv: nn.Conv2d, rank: int, in_hw: tuple[int, int], out_hw: tuple[int, int]) -> int:
    n, m, kh, kw = conv.weight.shape
    return (kh * kw * m + n) * rank * out_hw[0] * out_hw[1]
