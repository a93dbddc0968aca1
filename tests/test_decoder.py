import shutil

import pytest
import torch

from dd_medical.core.decoder import (
    BatchedDeepDecoder,
    DeepDecoder,
    conv_ladder,
    num_parameters,
    size_ladder,
    slice_generator,
)


def test_num_parameters_matches_reference_count():
    assert num_parameters(64, 6, 1) == 25_408
    assert num_parameters(32, 6, 1) == 6 * (32 * 32 + 64) + 32
    model = DeepDecoder(64, 64, channels=64, blocks=6, out_channels=1)
    assert sum(p.numel() for p in model.parameters()) == 25_408


@pytest.mark.parametrize("size", [(512, 512), (400, 512), (320, 260), (33, 47)])
def test_output_has_exact_size_for_any_slice(size):
    h, w = size
    ladder = size_ladder(h, w, 6)
    assert ladder[-1] == (h, w) and len(ladder) == 6
    model = DeepDecoder(h, w, channels=4, blocks=6)
    with torch.no_grad():
        out = model()
    assert out.shape == (1, 1, h, w)
    assert out.min() >= 0 and out.max() <= 1


def test_fixed_input_is_uniform_in_0_to_0_1_at_one_32nd_size():
    model = DeepDecoder(512, 512, channels=64, generator=torch.Generator().manual_seed(1))
    z = model.net_input
    assert z.shape == (1, 64, 16, 16)
    assert z.min() >= 0 and z.max() < 0.1


@pytest.mark.parametrize("architecture, norm_first", [("deep", False), ("conv", False), ("deep", True)])
def test_batched_equals_separate_decoders_with_same_weights(architecture, norm_first):
    gens = [slice_generator(0, i) for i in range(3)]
    singles = [DeepDecoder(40, 36, channels=8, blocks=4, generator=g, architecture=architecture, norm_first=norm_first)
               for g in gens]
    # Give the normalisation non-trivial learned scale/shift so the test covers them.
    for i, d in enumerate(singles):
        with torch.no_grad():
            for n in d.norms:
                n.weight.uniform_(0.5, 1.5, generator=torch.Generator().manual_seed(i))
                n.bias.uniform_(-0.2, 0.2, generator=torch.Generator().manual_seed(i + 10))
    batched = BatchedDeepDecoder.from_decoders(singles)
    with torch.no_grad():
        together = batched()
        apart = torch.cat([d() for d in singles])
    torch.testing.assert_close(together, apart, atol=1e-5, rtol=1e-5)


def test_norm_first_swaps_relu_and_normalisation():
    """norm_first: every block's output is a ReLU's (non-negative); the default's is normalised (zero mean per
    channel with unit scale and zero shift)."""
    for norm_first in (False, True):
        model = DeepDecoder(32, 32, channels=6, blocks=3, generator=slice_generator(1, 0), norm_first=norm_first)
        seen: list = []
        model.norms[1].register_forward_hook(lambda module, args, out, seen=seen: seen.append((args[0], out)))
        with torch.no_grad():
            model()
        before, after = seen[0]
        if norm_first:
            assert float(before.min()) < 0  # the normalisation sees the convolution's signed output
        else:
            assert float(before.min()) >= 0  # it sees the ReLU's
            torch.testing.assert_close(after.mean(dim=(2, 3)), torch.zeros(1, 6), atol=1e-5, rtol=0)
    same = [DeepDecoder(32, 32, channels=6, blocks=3, generator=slice_generator(1, 0), norm_first=n)() for n in
            (False, True)]
    assert not torch.allclose(same[0], same[1])


def test_conv_decoder_sizes_parameters_and_checks():
    # ConvDecoder: input at 1/16 size, equal upsampling factors, the last block at full size (no upsampling)
    assert conv_ladder(91, 117, 6) == [(6, 8), (11, 14), (18, 24), (31, 41), (53, 69), (91, 117), (91, 117)]
    assert num_parameters(8, 4, 2, architecture="conv") == 4 * (9 * 8 * 8 + 3 * 8) + 16
    model = DeepDecoder(33, 47, channels=8, blocks=4, out_channels=2, architecture="conv", output="linear")
    assert sum(p.numel() for p in model.parameters()) == num_parameters(8, 4, 2, architecture="conv")
    assert model().shape == (1, 2, 33, 47)
    batched = BatchedDeepDecoder(2, 33, 47, channels=8, blocks=4, architecture="conv")
    assert batched().shape == (2, 1, 33, 47) and batched.biases.shape == (4, 2, 8)
    assert not hasattr(BatchedDeepDecoder(2, 33, 47, channels=8, blocks=4), "biases")  # the codec's layout
    with pytest.raises(ValueError, match="architecture"):
        DeepDecoder(32, 32, architecture="unet")


def test_batched_init_from_generators_equals_single_init():
    batched = BatchedDeepDecoder(2, 32, 32, channels=8, blocks=6, generators=[slice_generator(5, i) for i in (7, 9)])
    single = DeepDecoder(32, 32, channels=8, blocks=6, generator=slice_generator(5, 9))
    with torch.no_grad():
        torch.testing.assert_close(batched()[1:], single(), atol=1e-5, rtol=1e-5)


@pytest.mark.skipif(shutil.which("cc") is None and shutil.which("gcc") is None,
                    reason="torch.compile on a CPU needs a C compiler")
def test_compiled_forward_equals_eager_forward_and_gradients():
    model = BatchedDeepDecoder(2, 24, 20, channels=4, blocks=3, generators=[slice_generator(0, i) for i in range(2)])
    eager = model()
    compiled = model(compiled=True)
    torch.testing.assert_close(compiled, eager, atol=1e-5, rtol=0)
    grads = [torch.autograd.grad(out.square().sum(), model.out_weight)[0] for out in (eager, compiled)]
    torch.testing.assert_close(grads[1], grads[0], atol=1e-5, rtol=1e-4)
