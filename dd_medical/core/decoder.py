"""The Deep Decoder network (Heckel & Hand, "Deep Decoder: Concise Image Representations from Untrained
Non-convolutional Networks", ICLR 2019), one instance and ``B`` instances evaluated together.

A fixed random input ``Z`` of shape ``(k, H0, W0)``, uniform in [0, 0.1), then ``blocks`` identical blocks

    1x1 conv (no bias) -> x2 bilinear upsampling (not in the last block) -> ReLU -> channel normalisation

and a 1x1 output convolution followed by a sigmoid (images in [0, 1]; ``output="linear"`` drops it for signed
images such as MR coil images). ``norm_first=True`` normalises before the ReLU (the order of the reference code's
compression experiments, reinhardh/supplement_deep_decoder). ``architecture="conv"`` is ConvDecoder (Darestani &
Heckel, "Accelerated MRI with un-trained neural networks", 2021): nearest upsampling, then a 3x3 convolution with bias,
input ``ceil(H/16) x ceil(W/16)``, the last block at full size.

Any ``(H, W)``: the upsampling goes through the sizes ``ceil(H / 2**j), ceil(W / 2**j)``, ``j = blocks - 1 .. 0``
(512: 16 -> 32 -> ... -> 512; 260: 9 -> 17 -> 33 -> 65 -> 130 -> 260).
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

NORM_EPS = 1e-5


ARCHITECTURES = ("deep", "conv")
#: :class:`BatchedDeepDecoder` state-dict entries stored ``(blocks, B, ...)``: their instance axis is 1, not 0.
BLOCK_MAJOR = ("scales", "shifts", "biases")


def slice_generator(seed: int, index: int, member: int = 0) -> torch.Generator:
    """The CPU generator of decoder ``member`` of slice ``index`` under base ``seed``: its initial weights and fixed
    input are drawn from it, so a slice's decoders do not depend on which other slices are fitted with it."""
    state = np.random.SeedSequence([int(seed), int(index), int(member)]).generate_state(2, dtype=np.uint32)
    return torch.Generator().manual_seed(int(state[0]) << 32 | int(state[1]))


#: ``hook(name, tensor) -> tensor``: applied to every weight tensor in the forward pass (``name`` is
#: ``"weights"``, ``"biases"``, ``"scales"``, ``"shifts"`` or ``"out_weight"``), e.g. fake quantisation.
WeightHook = Callable[[str, torch.Tensor], torch.Tensor]


def instance_axis(name: str) -> int:
    """The axis of the ``B`` instances in the :class:`BatchedDeepDecoder` state-dict entry ``name``."""
    return 1 if name in BLOCK_MAJOR else 0


def num_parameters(channels: int = 64, blocks: int = 6, out_channels: int = 1, architecture: str = "deep") -> int:
    """Weights of a decoder: ``blocks * (k^2 + 2k) + k * c`` (25,408 for k=64, 6 blocks, c=1); ConvDecoder
    (``"conv"``): ``blocks * (9k^2 + 3k) + k * c``."""
    per_block = channels * channels + 2 * channels if architecture == "deep" else 9 * channels * channels + 3 * channels
    return blocks * per_block + channels * out_channels


def size_ladder(height: int, width: int, blocks: int = 6) -> list[tuple[int, int]]:
    """Spatial sizes ``[(H0, W0), ..., (H, W)]`` of the ``blocks`` upsampling stages (input size first)."""
    ups = blocks - 1
    return [(math.ceil(height / 2**j), math.ceil(width / 2**j)) for j in range(ups, -1, -1)]


def conv_ladder(height: int, width: int, blocks: int = 6) -> list[tuple[int, int]]:
    """ConvDecoder sizes: the input ``(ceil(H/16), ceil(W/16))``, then the size of each of the ``blocks`` blocks
    (equal upsampling factors up to ``(H, W)`` for the first ``blocks - 1``, as ConvDecoder's ``hidden_size``; the last
    block stays at ``(H, W)``)."""
    h0, w0 = math.ceil(height / 16), math.ceil(width / 16)
    steps = max(1, blocks - 1)
    fy, fx = (height / h0) ** (1 / steps), (width / w0) ** (1 / steps)
    hidden = [(math.ceil(h0 * fy**n), math.ceil(w0 * fx**n)) for n in range(1, blocks - 1)]
    return [(h0, w0), *hidden, (height, width), (height, width)][: blocks + 1]


def _check_output(output: str) -> str:
    if output not in ("sigmoid", "linear"):
        raise ValueError(f"output must be 'sigmoid' or 'linear', got {output!r}")
    return output


def check_architecture(architecture: str) -> str:
    if architecture not in ARCHITECTURES:
        raise ValueError(f"architecture must be one of {', '.join(ARCHITECTURES)}, got {architecture!r}")
    return architecture


def _activate(x: torch.Tensor, output: str) -> torch.Tensor:
    return torch.sigmoid(x) if output == "sigmoid" else x


def _upsample(x: torch.Tensor, size: tuple[int, int], mode: str = "bilinear") -> torch.Tensor:
    if mode == "nearest":
        return F.interpolate(x, size=size, mode="nearest")
    return F.interpolate(x, size=size, mode="bilinear", align_corners=False)


def _uniform_(t: torch.Tensor, bound: float, generator: torch.Generator | None) -> torch.Tensor:
    return t.uniform_(-bound, bound, generator=generator)


class DeepDecoder(nn.Module):
    """One Deep Decoder for one ``(H, W)`` image with ``out_channels`` channels.

    Args:
        height: output rows in pixels (any size; see the module docstring).
        width: output columns in pixels.
        channels: ``k``, channels of every block (default 64, the paper's).
        blocks: number of blocks ``d`` (default 6: five x2 upsamplings, input ``H/32 x W/32``).
        out_channels: image channels ``c`` (1 for CT/MR magnitude).
        generator: CPU generator for the weights and the fixed input (``None``: torch's global one).
        output: ``"sigmoid"`` (images in [0, 1]) or ``"linear"`` (no output activation).
        architecture: ``"deep"`` (the paper's, default) or ``"conv"`` (ConvDecoder; see the module docstring).
        norm_first: normalise, then ReLU, in every block (default ``False``: ReLU, then normalise).

    ``forward()`` returns ``(1, c, H, W)`` in [0, 1].
    """

    def __init__(
        self,
        height: int,
        width: int,
        channels: int = 64,
        blocks: int = 6,
        out_channels: int = 1,
        generator: torch.Generator | None = None,
        output: str = "sigmoid",
        architecture: str = "deep",
        norm_first: bool = False,
    ) -> None:
        super().__init__()
        self.output = _check_output(output)
        self.architecture = check_architecture(architecture)
        self.norm_first = bool(norm_first)
        conv = architecture == "conv"
        self.sizes = conv_ladder(height, width, blocks) if conv else size_ladder(height, width, blocks)
        size = 3 if conv else 1
        self.convs = nn.ModuleList(nn.Conv2d(channels, channels, size, padding=size // 2, bias=conv)
                                   for _ in range(blocks))
        self.norms = nn.ModuleList(nn.InstanceNorm2d(channels, affine=True, eps=NORM_EPS) for _ in range(blocks))
        self.out = nn.Conv2d(channels, out_channels, 1, bias=False)
        for layer in self.convs:  # PyTorch's default conv init (bound 1 / sqrt(fan_in)), from our generator
            _uniform_(layer.weight.data, 1.0 / math.sqrt(channels * size * size), generator)
            if conv:
                _uniform_(layer.bias.data, 1.0 / math.sqrt(channels * size * size), generator)
        _uniform_(self.out.weight.data, 1.0 / math.sqrt(channels), generator)
        h0, w0 = self.sizes[0]
        self.register_buffer("net_input", torch.rand(1, channels, h0, w0, generator=generator) * 0.1)

    def forward(self) -> torch.Tensor:
        x = self.net_input
        for i, (conv, norm) in enumerate(zip(self.convs, self.norms, strict=True)):
            if self.architecture == "conv":  # ConvDecoder: upsample, then convolve at the new size
                if tuple(x.shape[-2:]) != self.sizes[i + 1]:
                    x = _upsample(x, self.sizes[i + 1], "nearest")
                x = conv(x)
            else:
                x = conv(x)
                if i + 1 < len(self.sizes):
                    x = _upsample(x, self.sizes[i + 1])
            x = F.relu(norm(x)) if self.norm_first else norm(F.relu(x))
        return _activate(self.out(x), self.output)


class BatchedDeepDecoder(nn.Module):
    """``B`` independent Deep Decoders evaluated in one pass (one set of kernels for ``B`` slices).

    Weights are ``[B, out, in]`` (1x1 convolutions as batched matrix products; ConvDecoder: ``[B, out, in, 3, 3]``,
    one convolution per instance, and biases ``[blocks, B, k]``), normalisation is per instance
    and channel with per-instance scale and shift, and every instance has its own fixed input. Instance ``b``
    computes exactly what a :class:`DeepDecoder` with the same weights computes.

    Args:
        batch: ``B``, number of independent decoders.
        height: as for :class:`DeepDecoder`.
        width: as for :class:`DeepDecoder`.
        channels: as for :class:`DeepDecoder`.
        blocks: as for :class:`DeepDecoder`.
        out_channels: as for :class:`DeepDecoder`.
        generators: one CPU generator per instance (so that an instance's initial weights depend on its own
            seed only, not on ``B`` or its position in the batch); ``None`` uses torch's global generator.
        output: as for :class:`DeepDecoder`.
        architecture: as for :class:`DeepDecoder`.
        norm_first: as for :class:`DeepDecoder`.

    ``forward()`` returns ``(B, c, H, W)`` in [0, 1].
    """

    def __init__(
        self,
        batch: int,
        height: int,
        width: int,
        channels: int = 64,
        blocks: int = 6,
        out_channels: int = 1,
        generators: list[torch.Generator] | None = None,
        output: str = "sigmoid",
        architecture: str = "deep",
        norm_first: bool = False,
    ) -> None:
        super().__init__()
        self.output = _check_output(output)
        self.architecture = check_architecture(architecture)
        self.norm_first = bool(norm_first)
        if generators is not None and len(generators) != batch:
            raise ValueError(f"need one generator per instance: {len(generators)} for a batch of {batch}")
        gens = generators if generators is not None else [None] * batch
        # Same draw order as DeepDecoder: conv weights (blocks, then output layer), then the fixed input.
        singles = [DeepDecoder(height, width, channels, blocks, out_channels, generator=g, architecture=architecture)
                   for g in gens]
        self.sizes = singles[0].sizes
        self.weights = nn.ParameterList(
            nn.Parameter(torch.stack([_conv_weight(s.convs[i]) for s in singles])) for i in range(blocks)
        )
        if architecture == "conv":
            self.biases = nn.Parameter(torch.stack([torch.stack([c.bias.detach() for c in s.convs]) for s in singles],
                                                   dim=1))
        self.scales = nn.Parameter(torch.ones(blocks, batch, channels))
        self.shifts = nn.Parameter(torch.zeros(blocks, batch, channels))
        self.out_weight = nn.Parameter(torch.stack([s.out.weight.detach()[:, :, 0, 0] for s in singles]))
        self.register_buffer("net_input", torch.cat([s.net_input for s in singles]))

    @property
    def batch(self) -> int:
        return self.out_weight.shape[0]

    @classmethod
    def from_decoders(cls, decoders: list[DeepDecoder]) -> BatchedDeepDecoder:
        """Stack ``B`` single decoders (same size and architecture) into one batched module (weights copied)."""
        first = decoders[0]
        h, w = first.sizes[-1]
        k = first.convs[0].weight.shape[0]
        out = cls(len(decoders), h, w, k, len(first.convs), first.out.weight.shape[0], output=first.output,
                  architecture=first.architecture, norm_first=first.norm_first)
        with torch.no_grad():
            for i in range(len(first.convs)):
                out.weights[i].copy_(torch.stack([_conv_weight(d.convs[i]) for d in decoders]))
                if first.architecture == "conv":
                    out.biases[i].copy_(torch.stack([d.convs[i].bias for d in decoders]))
                out.scales[i].copy_(torch.stack([d.norms[i].weight for d in decoders]))
                out.shifts[i].copy_(torch.stack([d.norms[i].bias for d in decoders]))
            out.out_weight.copy_(torch.stack([d.out.weight[:, :, 0, 0] for d in decoders]))
            out.net_input.copy_(torch.cat([d.net_input for d in decoders]))
        return out

    def forward(self, compiled: bool = False, hook: WeightHook | None = None) -> torch.Tensor:
        """``(B, c, H, W)``; ``compiled``: through :func:`compiled_forward` (fused kernels; compiles on first use);
        ``hook``: applied to every weight tensor first (:data:`WeightHook`)."""
        weights, biases = list(self.weights), getattr(self, "biases", None)
        scales, shifts, out_weight = self.scales, self.shifts, self.out_weight
        if hook is not None:
            weights = [hook("weights", w) for w in weights]
            biases = None if biases is None else hook("biases", biases)
            scales, shifts, out_weight = hook("scales", scales), hook("shifts", shifts), hook("out_weight", out_weight)
        run = compiled_forward() if compiled else batched_forward
        return run(self.net_input, weights, scales, shifts, out_weight, self.sizes, self.output, biases,
                   self.norm_first)


def batched_forward(
    net_input: torch.Tensor,
    weights: list[torch.Tensor],
    scales: torch.Tensor,
    shifts: torch.Tensor,
    out_weight: torch.Tensor,
    sizes: list[tuple[int, int]],
    output: str,
    biases: torch.Tensor | None = None,
    norm_first: bool = False,
) -> torch.Tensor:
    """:meth:`BatchedDeepDecoder.forward` as a function of its tensors, ``(B, c, H, W)``.

    3x3 weights ``(B, k, k, 3, 3)`` with ``biases`` ``(blocks, B, k)`` make it a ConvDecoder (``sizes`` from
    :func:`conv_ladder`: upsample to the block's size, then convolve). ``norm_first``: normalise, then ReLU.

    A plain function of tensors (no module state), so that one ``torch.compile`` of it serves every decoder of
    the same shape (:func:`compiled_forward`).
    """
    x = net_input
    batch, k = x.shape[:2]
    for i, weight in enumerate(weights):
        if weight.ndim == 3:
            x = _pixelwise(weight, x)
            if i + 1 < len(sizes):
                x = _upsample(x, sizes[i + 1])
        else:
            if tuple(x.shape[-2:]) != sizes[i + 1]:
                x = _upsample(x, sizes[i + 1], "nearest")
            x = _instance_conv(weight, x) + biases[i][:, :, None, None]
        # Per-instance channel normalisation: instance norm over (1, B*k, h, w) with per-instance affine.
        shape = x.shape
        x = F.instance_norm(
            (x if norm_first else F.relu(x)).reshape(1, batch * k, *shape[2:]),
            weight=scales[i].reshape(-1),
            bias=shifts[i].reshape(-1),
            eps=NORM_EPS,
        ).view(shape)
        if norm_first:
            x = F.relu(x)
    return _activate(_pixelwise(out_weight, x), output)


@functools.cache
def compiled_forward() -> Callable[..., torch.Tensor]:
    """``torch.compile(batched_forward)``, built once per process (compiled anew for each new input shape)."""
    return torch.compile(batched_forward, dynamic=False)


def _pixelwise(weight: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """Batched 1x1 convolution: ``weight (B, out, in)`` applied at every pixel of ``x (B, in, h, w)``."""
    b, c, h, w = x.shape
    return torch.bmm(weight, x.reshape(b, c, h * w)).view(b, weight.shape[1], h, w)


def _instance_conv(weight: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """Batched ``s x s`` convolution (zero padding): ``weight (B, out, in, s, s)`` applied to ``x (B, in, h, w)``.

    One convolution per instance, not one grouped convolution: a grouped convolution's kernels (and so its
    rounding) change with the number of groups, and Adam turns rounding in near-zero gradients into whole steps
    (measured: 0.07 apart after 5 steps), so a slice's result would depend on the batch size."""
    size = weight.shape[-1]
    return torch.cat([F.conv2d(x[b:b + 1], weight[b], padding=size // 2) for b in range(x.shape[0])])


def _conv_weight(conv: nn.Conv2d) -> torch.Tensor:
    """A block's conv weight as :class:`BatchedDeepDecoder` stores it: ``(out, in)`` (1x1) or ``(out, in, 3, 3)``."""
    weight = conv.weight.detach()
    return weight[:, :, 0, 0] if weight.shape[-1] == 1 else weight
