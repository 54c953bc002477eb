import pytest
import torch

from zoo import UnknownNameError, WeightsNotAvailableError, create_model, get_model_entry, list_models


def test_registry_lists_models_with_complete_entries():
    names = list_models()
    assert names == sorted(names) and len(names) >= 10
    for name in names:
        e = get_model_entry(name)
        assert e.weights.hub_repo.startswith("sslzoo/") and e.paper.url.startswith("https://arxiv.org/")
        assert e.input.channels == len(e.input.mean) == len(e.input.std)
        for r in e.paper_results:  # a paper number always says how, who reported it and where it was read
            assert r.protocol and r.source and r.url.startswith("https://") and r.split


def test_list_models_by_method():
    assert list_models(method="rotnet") == ["rotnet_alexnet", "rotnet_nin_cifar10", "rotnet_nin_fmnist"]
    assert list_models(method="nosuch") == []


def test_list_models_filters_by_shell_pattern_like_timm():
    resnet50s = list_models("*resnet50*")
    assert "byol_resnet50" in resnet50s and "sela_resnet50_augpp" in resnet50s
    assert all("resnet50" in n for n in resnet50s)
    assert list_models("rotnet_*") == list_models(method="rotnet")
    assert list_models("rotnet_alexnet") == ["rotnet_alexnet"]  # no wildcard: the whole name
    assert list_models("ROTNET_*") == [] and list_models("resnet50") == []
    assert list_models(["rotnet_a*", "*_vgg16"]) == ["deepcluster_vgg16", "deepercluster_vgg16", "rotnet_alexnet"]
    assert list_models("") == list_models([]) == list_models()
    assert list_models("*resnet50*", method="sela") == ["sela_resnet50", "sela_resnet50_augpp"]


def test_list_models_pretrained_means_weights_exist_somewhere():
    from zoo.hub import weights_origin

    with_weights, without = list_models(pretrained=True), list_models(pretrained=False)
    assert sorted(with_weights + without) == list_models() and not set(with_weights) & set(without)
    assert "rotnet_nin_fmnist" in with_weights  # shipped
    assert "deepcluster_alexnet" in with_weights  # the authors' release, fetched on first use
    assert "simclr_resnet50" in with_weights  # the authors' release, downloaded by hand
    assert "proxynca_resnet50" in without  # a paper recipe nobody has trained yet
    assert all(weights_origin(n) == "none" for n in without)
    assert list_models("*_fmnist", pretrained=True, method="rotnet") == ["rotnet_nin_fmnist"]


def test_create_model_applies_overrides_and_records_its_config():
    model = create_model("rotnet_nin_fmnist", num_blocks=3)
    assert model.feature_layers == ("block1", "block2", "block3")
    assert model.arch_kwargs == {"num_blocks": 3, "in_channels": 1, "width": 32}
    assert model.entry.name == "rotnet_nin_fmnist"
    assert model(torch.zeros(2, 1, 32, 32)).shape == (2, 32, 8, 8)


def test_unknown_model_suggests_close_names():
    with pytest.raises(UnknownNameError) as err:
        create_model("rotnet_alexnt")
    msg = str(err.value)
    assert "\n" not in msg and "'rotnet_alexnet'" in msg and msg.startswith("unknown model 'rotnet_alexnt'")


def test_bad_architecture_argument_is_a_usage_error():
    from zoo import UsageError

    with pytest.raises(UsageError, match="bad arguments for architecture 'nin'"):
        create_model("rotnet_nin_fmnist", depth=3)


def test_pretrained_without_published_weights_says_so():
    with pytest.raises(WeightsNotAvailableError, match="no published weights yet"):
        create_model("rotnet_alexnet", pretrained=True)


def test_paper_results_need_the_url_they_were_read_at():
    from zoo.registry import PaperResult

    with pytest.raises(ValueError, match="needs the https URL it was read at"):
        PaperResult("image-classification", "ImageNet-1k", "top-1", 50.0, "linear probe", "a README", "")


def test_one_imagenet_linear_reference_per_trainable_method():
    from training.methods import method_names
    from zoo.registry import IMAGENET_LINEAR_REFERENCE

    assert set(IMAGENET_LINEAR_REFERENCE) == set(method_names())
    for method, ref in IMAGENET_LINEAR_REFERENCE.items():
        if ref.result is None:  # no number: one line saying why
            assert ref.reason and "\n" not in ref.reason, method
            continue
        r = ref.result
        assert (r.dataset, r.split, r.metric, r.task) == ("ImageNet-1k", "validation", "top-1", "image-classification")
        assert r.url.startswith("https://") and not ref.reason
        assert any(arch in r.protocol for arch in ("ResNet-50", "AlexNet")), method  # the architecture is named
    resnet50 = [m for m, ref in IMAGENET_LINEAR_REFERENCE.items() if ref.result and "ResNet-50" in ref.result.protocol]
    assert len(resnet50) >= 7  # one architecture across methods where the papers allow
    assert IMAGENET_LINEAR_REFERENCE["npid"].result.value == 54.99  # the converted release, not the "update" file


def test_every_trainable_method_is_described_once_and_names_its_recipes():
    """zoo.methods describes each method that training/methods/ holds (the cards read it); its
    recipes carry the method's name and their own; a model trained by one of its recipes is that
    recipe's model."""
    from training.methods import get_recipe, method_module, method_names
    from zoo.methods import list_methods, method_info
    from zoo.registry import get_model_entry, list_models

    assert set(method_names()) <= set(list_methods())
    for name in method_names():
        assert method_info(name).name == name and method_info(name).pretext
        recipes = method_module(name).RECIPES
        assert "tiny" in recipes and all((r.method, r.name) == (name, key) for key, r in recipes.items())
    for model in list_models():
        entry = get_model_entry(model)
        if entry.recipe:
            assert get_recipe(entry.method, entry.recipe).model == model
    assert {m for m in list_methods() if method_info(m).uses_labels} == {"multigrain", "proxynca", "s4l"}


def test_create_model_returns_eval_mode_with_or_without_weights():
    """pretrained=True loads weights for inference in eval mode (as from_pretrained and
    huggingface_hub's PyTorchModelHubMixin do); pretrained=False returns the same mode, so a model
    never changes behaviour (BatchNorm statistics, dropout) with the flag that only picks weights."""
    model = create_model("rotnet_nin_fmnist")
    assert not model.training and not any(m.training for m in model.modules())
    pretrained = create_model("rotnet_nin_fmnist", pretrained=True)  # shipped: offline
    assert not pretrained.training and not any(m.training for m in pretrained.modules())
    x = torch.randn(4, 1, 32, 32)
    before = [b.clone() for b in model.buffers()]
    model(x)  # eval mode: the forward changes no BatchNorm statistic
    assert all(torch.equal(a, b) for a, b in zip(before, model.buffers()))
