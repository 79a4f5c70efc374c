"""Network decoupling (Guo et al., BMVC 2018): a regular conv as a sum of depthwise separable ones.

For a conv with kernel W (N outputs, M inputs, k x k), the N x k^2 matrix W[:, m]
of each input channel m has an SVD  U S V^T.  Each singular triple is one
depthwise separable conv: a k x k depthwise filter (a row of V^T) on channel m
followed by a pointwise column (U S) into the N outputs.  Summing all
min(N, k^2) of them over all channels gives W back exactly; keeping the top T
per channel is the best rank-T approximation of every W[:, m] (Eckart-Young).

The T-term sum runs as ONE depthwise conv with channel multiplier T (M -> M*T,
groups=M) and ONE 1x1 conv (M*T -> N): the "DW->PW" form.  The "PW->DW" form
decomposes each output filter W[n] (M x k^2) instead: a 1x1 conv M -> N*T, then
a grouped k x k conv (N*T -> N, groups=N) that sums each output's T channels.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from ..validate import DECOUPLE_ORDERS as ORDERS

__all__ = ["ORDERS", "DecoupledConv", "decoupled_mult_adds", "max_rank", "singular_values"]


def _matrices(weight: Tensor, order: str) -> Tensor:
    """The batch of matrices whose SVDs define the decoupling: per input channel
    (N x k^2 each) for dw_pw, per output channel (M x k^2 each) for pw_dw."""
    n, m, kh, kw = weight.shape
    if order == "dw_pw":
        return weight.permute(1, 0, 2, 3).reshape(m, n, kh * kw)
    if order == "pw_dw":
        return weight.reshape(n, m, kh * kw)
    raise ValueError(f"order must be one of {ORDERS}, got {order!r}")


def max_rank(conv: nn.Conv2d, order: str = "dw_pw") -> int:
    """The number of terms that reproduce ``conv`` exactly: min(rows, k^2)."""
    n, m, kh, kw = conv.weight.shape
    return min(n if order == "dw_pw" else m, kh * kw)


def singular_values(weight: Tensor, order: str = "dw_pw") -> Tensor:
    """Singular values per channel, shape (channels, max_rank), in float64."""
    return torch.linalg.svdvals(_matrices(weight.detach().double(), order))


class DecoupledConv(nn.Module):
    """``rank`` depthwise separable convs that sum to (an approximation of) a regular conv.

    Built with :meth:`from_conv`; stride, padding (and its mode), dilation and bias
    are the original conv's.  Cost per output pixel: ``k^2*M*T + M*T*N``
    (dw_pw) instead of ``k^2*M*N``.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: tuple[int, int],
        rank: int,
        *,
        order: str = "dw_pw",
        stride=1,
        padding=0,
        dilation=1,
        padding_mode: str = "zeros",
        bias: bool = True,
    ) -> None:
        super().__init__()
        if order not in ORDERS:
            raise ValueError(f"order must be one of {ORDERS}, got {order!r}")
        self.order, self.rank = order, rank
        self.in_channels, self.out_channels, self.kernel_size = in_channels, out_channels, tuple(kernel_size)
        spatial = dict(stride=stride, padding=padding, dilation=dilation, padding_mode=padding_mode)
        m, n, t = in_channels, out_channels, rank
        if order == "dw_pw":
            self.depthwise = nn.Conv2d(m, m * t, kernel_size, groups=m, bias=False, **spatial)
            self.pointwise = nn.Conv2d(m * t, n, 1, bias=bias)
        else:
            # The 1x1 conv comes first at the input's resolution; zero padding of its
            # output equals the 1x1 conv of padded input because it has no bias.
            self.pointwise = nn.Conv2d(m, n * t, 1, bias=False)
            self.depthwise = nn.Conv2d(n * t, n, kernel_size, groups=n, bias=bias, **spatial)

    @classmethod
    def from_conv(cls, conv: nn.Conv2d, rank: int, order: str = "dw_pw") -> DecoupledConv:
        """The top-``rank`` decoupling of ``conv`` (exact at ``rank == max_rank(conv)``)."""
        if conv.groups != 1:
            raise ValueError("only regular (groups=1) convolutions can be decoupled")
        limit = max_rank(conv, order)
        if not 1 <= rank <= limit:
            raise ValueError(f"rank must be between 1 and {limit} for a {tuple(conv.weight.shape)} kernel, got {rank}")
        n, m, kh, kw = conv.weight.shape
        module = cls(
            m,
            n,
            (kh, kw),
            rank,
            order=order,
            stride=conv.stride,
            padding=conv.padding,
            dilation=conv.dilation,
            padding_mode=conv.padding_mode,
            bias=conv.bias is not None,
        ).to(dtype=conv.weight.dtype, device=conv.weight.device)
        weight = conv.weight.detach()
        u, s, vh = torch.linalg.svd(_matrices(weight.double(), order), full_matrices=False)
        u, s, vh = u[..., :rank], s[..., :rank], vh[..., :rank, :]
        scaled = u * s[..., None, :]  # (channels, rows, rank): the pointwise columns U S
        t = rank
        if order == "dw_pw":
            depthwise = vh.reshape(m * t, 1, kh, kw)  # channel m*t + i: filter i of input channel m
            pointwise = scaled.permute(1, 0, 2).reshape(n, m * t, 1, 1)
        else:
            pointwise = scaled.permute(0, 2, 1).reshape(n * t, m, 1, 1)  # channel n*t + i feeds output n
            depthwise = vh.reshape(n, t, kh, kw)
        with torch.no_grad():
            module.depthwise.weight.copy_(depthwise)
            module.pointwise.weight.copy_(pointwise)
            if conv.bias is not None:
                last = module.pointwise if order == "dw_pw" else module.depthwise
                last.bias.copy_(conv.bias.detach())
        return module

    def forward(self, x: Tensor) -> Tensor:
        if self.order == "dw_pw":
            return self.pointwise(self.depthwise(x))
        return self.depthwise(self.pointwise(x))

    def to_conv(self) -> nn.Conv2d:
        """The regular conv this module computes (exact up to float rounding)."""
        dw, pw = self.depthwise, self.pointwise
        m, n, t = self.in_channels, self.out_channels, self.rank
        kh, kw = self.kernel_size
        if self.order == "dw_pw":
            weight = torch.einsum("nmt,mtk->nmk", pw.weight.reshape(n, m, t), dw.weight.reshape(m, t, kh * kw))
            bias = pw.bias
        else:
            weight = torch.einsum("ntm,ntk->nmk", pw.weight.reshape(n, t, m), dw.weight.reshape(n, t, kh * kw))
            bias = dw.bias
        conv = nn.Conv2d(
            m, n, (kh, kw), stride=dw.stride, padding=dw.padding, dilation=dw.dilation,
            padding_mode=dw.padding_mode, bias=bias is not None,
        )  # fmt: skip
        with torch.no_grad():
            conv.weight.copy_(weight.reshape(n, m, kh, kw))
            if bias is not None:
                conv.bias.copy_(bias)
        return conv

    def extra_repr(self) -> str:
        return f"{self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}, rank={self.rank}, order={self.order}"


def decoupled_mult_adds(conv: nn.Conv2d, rank: int, order: str, in_hw: tuple[int, int], out_hw: tuple[int, int]) -> int:
    """Mult-adds of the rank-T decoupling of ``conv``: k^2*M*T*F^2 + M*T*N*F^2 (dw_pw);
    for pw_dw the 1x1 conv runs at the input's resolution: M*N*T*F_in^2 + k^2*N*T*F^2."""
    n, m, kh, kw = conv.weight.shape
    out_pixels, in_pixels = out_hw[0] * out_hw[1], in_hw[0] * in_hw[1]
    if order == "dw_pw":
        return kh * kw * m * rank * out_pixels + m * rank * n * out_pixels
    return m * n * rank * in_pixels + kh * kw * n * rank * out_pixels
