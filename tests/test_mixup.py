"""Mixup without hesitation: its schedule and mixing on hand-worked numbers, the linear probe with
it, and tiny runs of the label-using recipes with it (and Gather-Excite) switched on."""

import dataclasses

import pytest
import torch
import torch.nn.functional as F

from training.engine import fit
from training.evaluation import linear_probe
from training.methods import method_module
from training.methods.mixup import MixupWithoutHesitation, mix, mixed_loss
from zoo import from_pretrained
from zoo.backbones.gather_excite import GatherExcite


def test_the_schedule_mixes_then_alternates_then_fades_as_the_authors_100_epochs_do():
    mwh = MixupWithoutHesitation()  # p 0.6, q 0.9, one-epoch periods
    assert [mwh.probability(e, 100) for e in (0, 30.5, 59, 59.9)] == [1.0, 1.0, 1.0, 1.0]
    assert [mwh.probability(e, 100) for e in (60, 61, 61.5, 62, 89)] == [1.0, 0.0, 0.0, 1.0, 0.0]
    assert [mwh.probability(e, 100) for e in (90, 95, 99.5)] == pytest.approx([1.0, 0.5, 0.1])


def test_the_schedule_in_fractions_of_a_one_epoch_run():
    mwh = MixupWithoutHesitation(period=0.05)
    # period starts 0.60 (12th: on), 0.65 (13th: off); 0.95: (1 - 0.95) / (1 - 0.9) = 0.5
    assert [mwh.probability(e, 1) for e in (0.59, 0.62, 0.66, 0.95)] == pytest.approx([1.0, 1.0, 0.0, 0.5])


def test_mix_and_mixed_loss_on_hand_worked_numbers():
    x = torch.tensor([[0.0], [10.0]])
    partner = torch.tensor([1, 0])
    assert mix(x, partner, 0.7).flatten().tolist() == pytest.approx([3.0, 7.0])
    labels = torch.tensor([1, 3])
    first = lambda y: y[0].float()  # noqa: E731 - the "loss" reads the first row's label
    assert float(mixed_loss(first, labels, partner, 0.25)) == pytest.approx(0.25 * 1 + 0.75 * 3)
    logits = torch.tensor([[2.0, 0.0], [0.0, 1.0]])
    ce = lambda y: F.cross_entropy(logits, y)  # noqa: E731
    assert torch.equal(mixed_loss(ce, torch.tensor([0, 1]), partner, 1.0), ce(torch.tensor([0, 1])))


def test_bad_schedules_are_refused():
    for kwargs in ({"alpha": 0}, {"p": 0.95}, {"q": 1.0}, {"period": 0}):
        with pytest.raises(ValueError, match="mixup needs"):
            MixupWithoutHesitation(**kwargs)


def test_the_linear_probe_learns_with_mixup_and_plain_training_is_unchanged():
    g = torch.Generator().manual_seed(0)
    y = torch.arange(400) % 2
    x = torch.randn(400, 8, generator=g) + 0.8 * y.view(-1, 1).float()  # two overlapping classes: ~85 % at best
    train, test = (x[:300], y[:300]), (x[300:], y[300:])
    plain = linear_probe(*train, *test, 2, epochs=6, lr=0.1, batch_size=30)
    assert plain == linear_probe(*train, *test, 2, epochs=6, lr=0.1, batch_size=30, mixup=None)
    mixed = linear_probe(*train, *test, 2, epochs=6, lr=0.1, batch_size=30, mixup=MixupWithoutHesitation())
    assert mixed.top1 > 0.8 and plain.top1 > 0.8 and mixed.top1 != plain.top1  # it learns, and mixup acted


@pytest.mark.parametrize("method, model_kwargs", [("multigrain", {"gather_excite": "theta", "ge_extent": 8}),
                                                  ("s4l", {"gather_excite": "theta-minus"})])
def test_tiny_recipes_train_with_mixup_and_gather_excite(method, model_kwargs, tmp_path):
    module = method_module(method)
    recipe = module.RECIPES["tiny"]
    recipe = recipe.replace(limit=4 * recipe.batch_size, model_kwargs={**recipe.model_kwargs, **model_kwargs},
                            options=dataclasses.replace(recipe.options, mixup=MixupWithoutHesitation(period=0.25)))
    result = fit(module.METHOD, recipe, tmp_path, progress=False)
    state = torch.load(sorted((tmp_path / "checkpoints").glob("*.pt"))[-1], weights_only=True)
    assert float(state["method"]["mixup.epoch"]) == 1.0  # the schedule saw the whole epoch
    reloaded = from_pretrained(result.model_dir)  # GE is recorded in config.json: it reloads as trained
    assert any(isinstance(m, GatherExcite) for m in reloaded.modules())
