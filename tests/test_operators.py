import numpy as np
import pytest
import torch
from monai.apps.reconstruction.complex_utils import complex_abs_t
from monai.apps.reconstruction.mri_utils import root_sum_of_squares_t
from monai.apps.reconstruction.transforms.array import EquispacedKspaceMask, RandomKspaceMask
from monai.networks.blocks.fft_utils_t import fftn_centered_t, ifftn_centered_t

from dd_medical.core.fit import FitConfig, fit
from dd_medical.core.operators import (
    CartesianFourier,
    GaussianProjection,
    Identity,
    ParallelBeamRadon,
    PixelMask,
    equispaced_mask,
    random_mask,
    rss,
    variable_density_mask,
)
from dd_medical.errors import InputError


def _dot_test(op, x_shape, y_shape, seed=0):
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(x_shape, generator=gen, dtype=torch.float32)
    y = torch.randn(y_shape, generator=gen, dtype=torch.float32)
    ax = op.forward(x)
    assert tuple(ax.shape) == tuple(y_shape)
    aty = op.adjoint(y)
    assert tuple(aty.shape) == tuple(x_shape)
    lhs = float((ax.double() * y.double()).sum())
    rhs = float((x.double() * aty.double()).sum())
    assert abs(lhs - rhs) <= 1e-4 * max(abs(lhs), abs(rhs))


@pytest.mark.parametrize("coils", [1, 3])
@pytest.mark.parametrize("mask_kind", ["lines", "2d"])
def test_cartesian_fourier_dot_product(coils, mask_kind):
    mask = equispaced_mask(24, 4, 0.1, seed=1) if mask_kind == "lines" else variable_density_mask((20, 24), 3)
    op = CartesianFourier(mask, coils=coils)
    _dot_test(op, (2, 2 * coils, 20, 24), (2, coils, 20, 24, 2))


def test_cartesian_fourier_matches_monai_centered_fft_and_its_inverse():
    op = CartesianFourier(torch.ones(16), coils=2)  # fully sampled
    x = torch.randn(1, 4, 12, 16)
    images = x.view(1, 2, 2, 12, 16).permute(0, 1, 3, 4, 2)  # (B, coils, H, W, 2)
    kspace = op.forward(x)
    torch.testing.assert_close(kspace, fftn_centered_t(images, spatial_dims=2, is_complex=True), atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(op.adjoint(kspace), x, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(op.baseline(kspace), rss(x))
    roundtrip = ifftn_centered_t(kspace, spatial_dims=2, is_complex=True)
    torch.testing.assert_close(roundtrip.permute(0, 1, 4, 2, 3).reshape(1, 4, 12, 16), x, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("real", [False, True])
def test_cartesian_fourier_is_monais_centred_fft_and_zero_filled_rss(real):
    """Odd sizes (where fftshift and ifftshift differ), a batch of 2, 3 coils, a mask from MONAI's own transform:
    the k-space and the adjoint are MONAI's bit for bit, the baseline is MONAI's zero-filled RSS."""
    transform = EquispacedKspaceMask(center_fractions=[0.2], accelerations=[3])
    transform.set_random_state(1)
    gen = torch.Generator().manual_seed(0)
    images = torch.randn(2, 3, 13, 17, 2, generator=gen)  # (B, coils, H, W, 2)
    if real:
        images[..., 1] = 0
    masked, zero_filled_rss = transform(fftn_centered_t(images, spatial_dims=2))
    op = CartesianFourier(transform.mask.reshape(-1), coils=3, real=real)
    x = images[..., 0] if real else images.permute(0, 1, 4, 2, 3).reshape(2, 6, 13, 17)
    kspace = op.forward(x)
    assert torch.equal(kspace, (fftn_centered_t(x, spatial_dims=2, is_complex=False) if real
                                else fftn_centered_t(images, spatial_dims=2)) * transform.mask)
    assert torch.equal(kspace, masked) if not real else torch.allclose(kspace, masked, atol=1e-6)
    back = ifftn_centered_t(kspace, spatial_dims=2)
    assert torch.equal(op.adjoint(kspace), back[..., 0] if real else back.permute(0, 1, 4, 2, 3).reshape(2, 6, 13, 17))
    torch.testing.assert_close(op.baseline(kspace)[:, 0], zero_filled_rss, rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(op.to_image(x), root_sum_of_squares_t(complex_abs_t(images), spatial_dim=1),
                               rtol=1e-6, atol=1e-6)


def test_cartesian_fourier_gradients_are_those_through_monais_fft():
    """The decoder is fitted through the operator: its data loss has MONAI's gradient, and autograd agrees with
    finite differences (double precision, odd sizes)."""
    mask = equispaced_mask(7, 2, 0.3, seed=0)
    op = CartesianFourier(mask, coils=2)
    gen = torch.Generator().manual_seed(3)
    x = torch.randn(2, 4, 5, 7, generator=gen, requires_grad=True)
    y = torch.randn(2, 2, 5, 7, 2, generator=gen)
    (grad,) = torch.autograd.grad(op.data_loss(op(x), y).sum(), x)
    leaf = x.detach().clone().requires_grad_(True)
    direct = fftn_centered_t(leaf.view(2, 2, 2, 5, 7).permute(0, 1, 3, 4, 2), spatial_dims=2) * op.mask[..., None]
    (expected,) = torch.autograd.grad((direct - y).pow(2).flatten(1).mean(dim=1).sum(), leaf)
    assert torch.equal(grad, expected)
    double = CartesianFourier(mask, coils=2).double()
    xd = torch.randn(1, 4, 5, 7, dtype=torch.float64, generator=gen, requires_grad=True)
    yd = torch.randn(1, 2, 5, 7, 2, dtype=torch.float64, generator=gen)
    assert torch.autograd.gradcheck(double.forward, (xd,))
    assert torch.autograd.gradcheck(lambda t: double.to_image(double.finalize(t, yd)), (xd,))


def test_cartesian_fourier_masks_columns_and_zero_fills():
    mask = equispaced_mask(32, 4, 0.08, seed=0)
    op = CartesianFourier(mask)
    k = op.forward(torch.rand(1, 2, 32, 32))
    assert k.shape == (1, 1, 32, 32, 2)
    assert torch.all(k[..., mask == 0, :] == 0) and torch.any(k[..., mask == 1, :] != 0)
    assert op.image_shape(k) == (2, 32, 32)
    assert op.baseline(k).shape == (1, 1, 32, 32)
    with pytest.raises(InputError, match="does not match the mask"):
        op.image_shape(torch.zeros(1, 1, 32, 30, 2))
    with pytest.raises(InputError, match="coils=1"):
        op.image_shape(torch.zeros(1, 2, 32, 32, 2))


@pytest.mark.parametrize("coils", [1, 2])
def test_cartesian_fourier_real_object_dot_product_and_data_consistency(coils):
    mask = equispaced_mask(24, 4, 0.1, seed=1)
    real = CartesianFourier(mask, coils=coils, real=True)
    _dot_test(real, (2, coils, 20, 24), (2, coils, 20, 24, 2))
    x = torch.rand(2, coils, 20, 24)
    y = real.forward(x)
    assert real.image_shape(y) == (coils, 20, 24)
    # same k-space as the complex operator given zero imaginary channels
    full = CartesianFourier(mask, coils=coils)
    with_imag = torch.stack([x, torch.zeros_like(x)], dim=2).reshape(2, 2 * coils, 20, 24)
    torch.testing.assert_close(full.forward(with_imag), y)
    torch.testing.assert_close(real.baseline(y), full.baseline(y))
    # data consistency keeps the measured samples: the true image is unchanged, an empty guess gives (the real part
    # of) zero-filling
    def consistent(op, images):  # data consistency, then the RSS magnitude (B, H, W)
        return op.to_image(op.finalize(images, y))

    torch.testing.assert_close(consistent(real, x), real.to_image(x), atol=1e-5, rtol=0)
    torch.testing.assert_close(consistent(real, torch.zeros_like(x)), real.to_image(real.adjoint(y)),
                               atol=1e-5, rtol=0)
    torch.testing.assert_close(consistent(full, torch.zeros_like(with_imag)), full.baseline(y)[:, 0],
                               atol=1e-5, rtol=0)
    guess = torch.rand(2, coils, 20, 24)
    merged = consistent(real, guess)
    assert merged.shape == (2, 20, 24)
    assert not torch.allclose(merged, real.to_image(guess), atol=1e-3)


@pytest.mark.parametrize("maker", [random_mask, equispaced_mask])
@pytest.mark.parametrize("acceleration", [4, 8])
def test_line_masks_have_centre_and_rate_and_are_seeded(maker, acceleration):
    width = 256
    mask = maker(width, acceleration, 0.08, seed=3)
    assert mask.shape == (width,) and mask.dtype == np.float32
    num_low = round(width * 0.08)
    pad = (width - num_low + 1) // 2
    assert mask[pad:pad + num_low].all()
    assert abs(mask.sum() - width / acceleration) <= 0.25 * width / acceleration
    np.testing.assert_array_equal(mask, maker(width, acceleration, 0.08, seed=3))


def test_random_mask_is_monais_random_kspace_mask_and_keeps_its_seeds():
    # lines recorded from the hand-written mask this one replaced: a seed keeps its mask
    assert random_mask(32, 4, 0.08, seed=3).nonzero()[0].tolist() == [0, 4, 7, 9, 15, 16, 17, 20, 28, 31]
    assert random_mask(24, 3, 0.1, seed=7).nonzero()[0].tolist() == [3, 6, 11, 12, 20, 21, 23]
    transform = RandomKspaceMask(center_fractions=[0.08], accelerations=[6])
    transform.set_random_state(state=np.random.RandomState(np.random.PCG64(11)))
    transform(torch.zeros(1, 1, 64, 2))
    np.testing.assert_array_equal(random_mask(64, 6, 0.08, seed=11), transform.mask.reshape(-1).numpy())
    assert random_mask(16, 4, 1.0).all() and random_mask(16, 1, 0.0).all()  # all centre; no acceleration


def test_equispaced_mask_samples_as_many_lines_as_monai():
    transform = EquispacedKspaceMask(center_fractions=[0.08], accelerations=[4], spatial_dims=2, is_complex=True)
    transform.set_random_state(0)
    transform(torch.zeros(1, 64, 128, 2))
    assert abs(float(transform.mask.sum()) - equispaced_mask(128, 4, 0.08).sum()) <= 1


def test_variable_density_mask_rate_centre_and_density():
    mask2d = variable_density_mask((64, 64), acceleration=4, center_fraction=0.1, seed=0)
    assert mask2d.shape == (64, 64) and mask2d.sum() == round(64 * 64 / 4)
    assert mask2d[29:35, 29:35].all()  # centre square
    assert mask2d[16:48, 16:48].mean() > mask2d.mean()  # denser inside
    lines = variable_density_mask(100, acceleration=5, seed=1)
    assert lines.shape == (100,) and lines.sum() == 20
    assert not np.array_equal(lines, variable_density_mask(100, acceleration=5, seed=2))


@pytest.mark.parametrize("maker", [random_mask, equispaced_mask, variable_density_mask])
def test_acceleration_below_one_is_rejected(maker):
    with pytest.raises(InputError, match="acceleration must be >= 1"):
        maker(64, 0.5, 0.08)


@pytest.mark.parametrize("angles", [np.linspace(0, 180, 30, endpoint=False), np.linspace(0, 120, 20, endpoint=False)])
def test_radon_dot_product_and_autograd_adjoint(angles):
    op = ParallelBeamRadon(angles, (24, 20))
    _dot_test(op, (2, 1, 24, 20), (2, 1, len(angles), op.detectors))
    x = torch.rand(1, 1, 24, 20, requires_grad=True)
    y = torch.rand(1, 1, len(angles), op.detectors)
    (op.forward(x) * y).sum().backward()
    torch.testing.assert_close(x.grad, op.adjoint(y))


@pytest.mark.parametrize("subpixels", [2, 3])
def test_supersampled_radon_is_exact_adjoint_and_keeps_each_pixels_mass(subpixels):
    angles = np.linspace(0, 180, 7, endpoint=False)
    op = ParallelBeamRadon(angles, (12, 10), subpixels=subpixels)
    _dot_test(op, (2, 1, 12, 10), (2, 1, 7, op.detectors))
    per_view = op.matrix.to_dense().reshape(7, op.detectors, 12 * 10).sum(dim=1)  # each pixel's weight per view
    torch.testing.assert_close(per_view, torch.ones_like(per_view))
    assert ParallelBeamRadon(angles, (12, 10), subpixels=1).matrix._nnz() < op.matrix._nnz()
    with pytest.raises(InputError, match="subpixels"):
        ParallelBeamRadon(angles, 12, subpixels=0)


def test_supersampled_projection_of_a_disk_is_closer_to_its_line_integrals():
    size, radius = 48, 18
    yy, xx = np.mgrid[0:size, 0:size] - (size - 1) / 2
    inside = np.zeros((size, size))
    for a in range(8):  # anti-aliased disk: the fraction of 8 x 8 sample points of each pixel inside it
        for b in range(8):
            inside += (xx + (a + 0.5) / 8 - 0.5) ** 2 + (yy + (b + 0.5) / 8 - 0.5) ** 2 < radius**2
    disk = torch.tensor(inside / 64, dtype=torch.float32)[None, None]
    angles = np.linspace(0, 180, 36, endpoint=False)
    errors = []
    for subpixels in (1, 2):
        op = ParallelBeamRadon(angles, size, subpixels=subpixels)
        offsets = np.linspace(-1, 1, 201)  # the chord length, averaged over a bin's linear (triangle) response
        u = np.arange(op.detectors)[:, None] - (op.detectors - 1) / 2 + offsets[None, :]
        triangle = (1 - np.abs(offsets)) / (1 - np.abs(offsets)).sum()
        chord = (2 * np.sqrt(np.clip(radius**2 - u**2, 0, None)) * triangle).sum(axis=1)
        errors.append(float(np.sqrt(((op.forward(disk)[0, 0].numpy() - chord[None]) ** 2).mean())))
    assert errors[1] < 0.5 * errors[0]  # measured: RMS 0.36 -> 0.12 (pixel-driven aliasing, not the disk's edge)


def test_fbp_reconstructs_a_disk_from_many_views():
    size = 48
    yy, xx = np.mgrid[0:size, 0:size] - (size - 1) / 2
    disk = torch.tensor((xx**2 + yy**2 < 14**2).astype(np.float32))[None, None]
    op = ParallelBeamRadon(np.linspace(0, 180, 120, endpoint=False), size)
    for name in ("ramp", "hann"):
        image = op.fbp(op.forward(disk), name)[0, 0]
        assert abs(float(image[20:28, 20:28].mean()) - 1) < 0.05
        assert abs(float(image[:6, :6].mean())) < 0.05
    with pytest.raises(InputError, match="unknown FBP filter"):
        op.fbp(op.forward(disk), "shepp")


def test_radon_data_loss_weights_fine_detail_like_the_ramp_filter():
    op = ParallelBeamRadon(np.linspace(0, 180, 12, endpoint=False), 16)
    plain = ParallelBeamRadon(np.linspace(0, 180, 12, endpoint=False), 16, precondition=False)
    y = torch.rand(3, 1, 12, op.detectors)
    x = y.clone()
    x[1] += 0.1
    x[2, ..., 1::2] += 0.1  # the same energy, at the detector's highest frequency
    x[2, ..., ::2] -= 0.1
    loss = op.data_loss(x, y)
    assert loss.shape == (3,) and float(loss[0]) == 0
    assert float(loss[2]) > 10 * float(loss[1]) > 0  # weight |f| + eps: ~0.5 at Nyquist, eps at zero frequency
    torch.testing.assert_close(plain.data_loss(x, y), (x - y).pow(2).flatten(1).mean(1))


def test_preconditioned_ct_fit_reaches_fine_detail_sooner():
    size = 32
    yy, xx = np.mgrid[0:size, 0:size] - (size - 1) / 2
    phantom = (0.3 * (xx**2 + yy**2 < 13**2) + 0.4 * ((xx - 4) ** 2 + yy**2 < 3**2)
               + 0.3 * (np.abs(xx + 6) + np.abs(yy - 2) < 3)).astype(np.float32)
    image = torch.from_numpy(phantom)[None, None]
    angles = np.linspace(0, 180, 24, endpoint=False)
    config = FitConfig(channels=32, blocks=4, iterations=300, ensemble=1, stopping="fixed", learning_rate=0.01,
                       final_learning_rate=0.001, amp=False)
    errors = []
    for precondition in (False, True):
        op = ParallelBeamRadon(angles, size, precondition=precondition)
        estimate = fit(op, op.forward(image), config).image
        errors.append(float((estimate - image).pow(2).mean()))
    assert errors[1] < 0.5 * errors[0]


def test_radon_rejects_zero_views_and_wrong_sinograms():
    with pytest.raises(InputError, match="at least one view"):
        ParallelBeamRadon([], 32)
    op = ParallelBeamRadon(np.linspace(0, 180, 10, endpoint=False), 32)
    with pytest.raises(InputError, match="views=10"):
        op.image_shape(torch.zeros(1, 1, 12, op.detectors))


def test_pixel_mask_and_gaussian_projection_dot_products_and_baselines():
    mask = np.random.default_rng(0).uniform(size=(16, 12)) > 0.5
    _dot_test(PixelMask(mask), (2, 3, 16, 12), (2, 3, 16, 12))
    op = GaussianProjection(150, (16, 12), seed=0)
    _dot_test(op, (2, 1, 16, 12), (2, 150))
    x = torch.rand(1, 1, 16, 12)
    recon = op.baseline(op.forward(x))
    torch.testing.assert_close(op.forward(recon), op.forward(x), atol=1e-4, rtol=1e-3)  # consistent
    full = GaussianProjection(16 * 12, (16, 12), seed=0)
    torch.testing.assert_close(full.baseline(full.forward(x)), x, atol=1e-3, rtol=1e-3)
    _dot_test(Identity(), (1, 1, 8, 8), (1, 1, 8, 8))


def test_operators_reject_complex_or_empty_masks():
    with pytest.raises(InputError, match="complex"):
        CartesianFourier(np.ones(16, dtype=np.complex64))
    with pytest.raises(InputError, match="samples nothing"):
        CartesianFourier(np.zeros(16))
    with pytest.raises(InputError, match="observes no pixel"):
        PixelMask(np.zeros((8, 8)))


def test_ray_weights_weigh_each_rays_residual_per_slice():
    angles = np.linspace(0, 180, 12, endpoint=False)
    plain = ParallelBeamRadon(angles, 16, precondition=False)
    gen = torch.Generator().manual_seed(0)
    weights = torch.rand(2, 12, plain.detectors, generator=gen) + 0.1
    weighted = ParallelBeamRadon(angles, 16, precondition=False, ray_weights=weights)
    x = torch.rand(4, 1, 16, 16, generator=gen)  # 2 slices x 2 members, each slice's rows consecutive
    y = plain(torch.rand(2, 1, 16, 16, generator=gen)).repeat_interleave(2, dim=0)
    residual = (plain(x) - y)[:, 0] ** 2
    normalised = weights / weights.flatten(1).mean(dim=1).view(-1, 1, 1)
    expected = (residual * normalised.repeat_interleave(2, dim=0)).flatten(1).mean(dim=1)
    torch.testing.assert_close(weighted.data_loss(weighted(x), y), expected)
    assert not torch.allclose(plain.data_loss(plain(x), y), expected)
    part = weighted.slices(1, 2)  # slice 1's weights, the same system matrix
    assert part.matrix is weighted.matrix and weighted.ray_weights.shape[0] == 2
    torch.testing.assert_close(part.data_loss(part(x[2:]), y[2:]), expected[2:])
    shared = ParallelBeamRadon(angles, 16, ray_weights=weights[0])
    assert shared.slices(0, 1) is shared
    again = plain.with_ray_weights(weights)  # the same geometry, its matrix shared, not rebuilt
    assert again.matrix is plain.matrix and plain.ray_weights is None
    torch.testing.assert_close(again.data_loss(again(x), y), expected)
    # uniform weights change nothing, with or without the frequency weighting
    for precondition in (False, True):
        flat = torch.full((12, plain.detectors), 7.0)
        ones = ParallelBeamRadon(angles, 16, precondition=precondition, ray_weights=flat)
        same = ParallelBeamRadon(angles, 16, precondition=precondition)
        torch.testing.assert_close(ones.data_loss(ones(x), y), same.data_loss(same(x), y))
    with pytest.raises(InputError, match="non-negative"):
        ParallelBeamRadon(angles, 16, ray_weights=-weights[0])
    with pytest.raises(InputError, match="ray weights must be"):
        ParallelBeamRadon(angles, 16, ray_weights=weights[0, :5])
