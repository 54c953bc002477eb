"""torch.hub entrypoints: one per sslzoo registry model, generated from the registry.

    model = torch.hub.load("sslzoo/sslzoo", "rotnet_alexnet", pretrained=True, trust_repo=True)
    torch.hub.list("sslzoo/sslzoo"); print(torch.hub.help("sslzoo/sslzoo", "rotnet_alexnet"))

Each entrypoint is ``name(pretrained=False, **kwargs)`` and returns ``zoo.create_model(name,
pretrained=pretrained, **kwargs)``. This file imports nothing but ``zoo``, so a project with its own
``training`` or ``export`` packages can load sslzoo models without clashes.
"""

dependencies = ["torch", "torchvision", "numpy", "safetensors", "huggingface_hub", "tqdm", "click"]

from zoo.hub import hub_entrypoints as _hub_entrypoints  # noqa: E402

globals().update(_hub_entrypoints())
