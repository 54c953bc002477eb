"""BiGAN's pieces on hand-worked values, and the one-backward split of the two players' gradients."""

import math

import pytest
import torch
from torch import nn

from training.methods import get_recipe, method_module
from training.methods.bigan import (Generator, discriminator_accuracy, discriminator_loss, encoder_generator_loss,
                                    sample_codes, split_gan_loss, upsampling_plan)
from zoo.registry import InputSpec

LN3 = math.log(3.0)


def test_losses_at_chance_are_log_2_for_both_players():
    zeros = torch.zeros(4)
    assert discriminator_loss(zeros, zeros).item() == pytest.approx(math.log(2.0), abs=1e-6)
    assert encoder_generator_loss(zeros, zeros).item() == pytest.approx(math.log(2.0), abs=1e-6)


def test_losses_when_d_is_right_with_odds_three_to_one():
    # Real pairs at logit ln 3 (p = 3/4), generated at -ln 3: D's loss is -ln(3/4) = ln(4/3); E and
    # G, with labels swapped, pay -ln(1/4) = ln 4 on each half.
    real, fake = torch.tensor([LN3, LN3]), torch.tensor([-LN3, -LN3])
    assert discriminator_loss(real, fake).item() == pytest.approx(math.log(4 / 3), abs=1e-6)
    assert encoder_generator_loss(real, fake).item() == pytest.approx(math.log(4.0), abs=1e-6)
    # The halves are averaged, not the pairs: one real pair weighs as much as three generated ones.
    d = discriminator_loss(torch.tensor([LN3]), torch.tensor([-LN3, 0.0, 0.0]))
    assert d.item() == pytest.approx(0.5 * (math.log(4 / 3) + (math.log(4 / 3) + 2 * math.log(2)) / 3), abs=1e-6)


def test_discriminator_accuracy_counts_logit_zero_as_generated():
    # real [1, -1] -> right, wrong; generated [0, 0.5] -> right (0 says "generated"), wrong.
    assert discriminator_accuracy(torch.tensor([1.0, -1.0]), torch.tensor([0.0, 0.5])).item() == 0.5
    assert discriminator_accuracy(torch.tensor([2.0]), torch.tensor([-3.0])).item() == 1.0


@pytest.mark.parametrize("size, plan", [(32, (4, 3)), (64, (4, 4)), (224, (7, 5)), (28, (7, 2))])
def test_generator_upsampling_plan(size, plan):
    assert upsampling_plan(size) == plan


def test_generator_upsampling_plan_refuses_odd_sizes():
    with pytest.raises(ValueError, match="halves"):
        upsampling_plan(33)


def test_codes_are_uniform_on_the_cube():
    torch.manual_seed(0)
    z = sample_codes(4000, 3, torch.device("cpu"))
    assert z.shape == (4000, 3) and z.min() >= -1 and z.max() <= 1
    assert z.var().item() == pytest.approx(1 / 3, abs=0.02)  # the variance of U[-1, 1]


def test_generator_images_are_normalised_pixels_in_0_1():
    spec = InputSpec(size=32, resize=32, colour_space="grey", mean=(0.25,), std=(0.5,))
    g = Generator(8, spec, width=4)
    out = g(sample_codes(5, 8, torch.device("cpu")))
    assert out.shape == (5, 1, 32, 32)
    pixels = out * 0.5 + 0.25
    assert pixels.min() >= 0 and pixels.max() <= 1


class _PairD(nn.Module):
    """A linear discriminator over flattened image and code: small enough to reason about."""

    def __init__(self):
        super().__init__()
        self.lin = nn.Linear(4 + 2, 1)

    def forward(self, x, z):
        return self.lin(torch.cat([x.flatten(1), z], 1)).squeeze(1)


def test_one_backward_gives_each_player_the_gradient_of_its_own_loss():
    torch.manual_seed(0)
    d = _PairD()
    x, ex = torch.randn(3, 1, 2, 2), torch.randn(3, 2, requires_grad=True)   # ex: E's output
    gz, z = torch.randn(3, 1, 2, 2, requires_grad=True), torch.randn(3, 2)   # gz: G's output
    total, d_loss, eg_loss, _ = split_gan_loss(d, (x, ex), (gz, z))
    total.backward()
    # What each player should get, computed apart.
    logits = d(torch.cat([x, gz.detach()]), torch.cat([ex.detach(), z]))
    want_d = torch.autograd.grad(discriminator_loss(logits[:3], logits[3:]), list(d.parameters()))
    logits = d(torch.cat([x, gz]), torch.cat([ex, z]))
    want_eg = torch.autograd.grad(encoder_generator_loss(logits[:3], logits[3:]), [ex, gz])
    for p, w in zip(d.parameters(), want_d):
        assert torch.allclose(p.grad, w, atol=1e-6)
    assert torch.allclose(ex.grad, want_eg[0], atol=1e-6) and torch.allclose(gz.grad, want_eg[1], atol=1e-6)
    # Signs: a small step along each player's gradient lowers its own loss, that is, D gets better at
    # telling the pairs apart and E/G's pairs fool it more (D's loss rises).
    with torch.no_grad():
        for p in d.parameters():
            p -= 0.01 * p.grad
        _, d_after, _, _ = split_gan_loss(d, (x, ex), (gz, z))
        assert d_after < d_loss
        _, d_fooled, eg_after, _ = split_gan_loss(d, (x, ex - 0.01 * ex.grad), (gz - 0.01 * gz.grad, z))
        assert eg_after < split_gan_loss(d, (x, ex), (gz, z))[2] and d_fooled > d_after


def test_the_method_trains_d_with_its_loss_and_the_encoder_with_the_swapped_one():
    torch.manual_seed(0)
    recipe = get_recipe("bigan", "tiny")
    method = method_module("bigan").METHOD(recipe)
    x = torch.randn(4, 1, 32, 32)
    torch.manual_seed(1)
    method({"x": x})["loss"].backward()
    encoder_grad = [p.grad.clone() for p in method.backbone.parameters()]
    d_grad = [p.grad.clone() for p in method.discriminator.parameters()]
    assert all(g.abs().sum() > 0 for g in encoder_grad[:1] + d_grad[:1])
    # The same batch and codes again, each loss backpropagated alone.
    method.zero_grad()
    torch.manual_seed(1)
    real, fake = method.pairs(x)
    _, d_loss, eg_loss, _ = split_gan_loss(method.discriminator, real, fake)
    torch.autograd.backward(eg_loss)
    assert all(torch.allclose(p.grad, g, atol=1e-6) for p, g in zip(method.backbone.parameters(), encoder_grad))
    assert all(p.grad is None or p.grad.abs().sum() == 0 for p in method.discriminator.parameters())


def test_parameter_groups_keep_module_order_and_give_d_its_own_rate():
    # Optimiser state is restored by position, so the groups must list parameters in a fixed order.
    recipe = get_recipe("bigan", "small")
    method = method_module("bigan").METHOD(recipe.replace(model_kwargs={"widths": (4, 4, 4, 4)}))
    rest, d = method.parameter_groups()
    assert [id(p) for p in d["params"]] == [id(p) for p in method.discriminator.parameters()]
    assert d["lr_scale"] == recipe.options.discriminator_lr_scale == 0.2
    assert [id(p) for p in rest["params"]] + [id(p) for p in d["params"]] == \
        [id(p) for p in method.parameters()]  # the discriminator is registered last
