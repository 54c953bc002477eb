"""What each method is: its paper, what it trains a network to do, whether it needs labels.

One ``MethodInfo`` per method, the only place these facts are written. The registry's entries
name the method they were trained with (``ModelEntry.method``), and the model cards, ``zoo
info`` and the README's tables read the facts from here. A method sslzoo can train is the module
``training/methods/<name>.py`` of the same name; ``zoo`` never imports it, and a test checks that
every trainable method has its ``MethodInfo`` here.
"""

from __future__ import annotations

from dataclasses import dataclass

from zoo.errors import UnknownNameError


@dataclass(frozen=True)
class Paper:
    title: str
    authors: str
    venue: str
    url: str


@dataclass(frozen=True)
class MethodInfo:
    name: str           # as in `zoo train NAME` and ModelEntry.method
    title: str          # as the paper writes it
    paper: Paper
    pretext: str        # what the network is trained to do, in our words, for the model cards
    uses_labels: bool = False  # trained on class labels: representation learning, not self-supervised


_METHODS: dict[str, MethodInfo] = {}


def _declare(info: MethodInfo) -> MethodInfo:
    if info.name in _METHODS:
        raise ValueError(f"method {info.name!r} is declared twice")
    _METHODS[info.name] = info
    return info


def _prose(text: str) -> str:
    """A paragraph written over indented lines, as one line."""
    return " ".join(text.split())


def method_info(name: str) -> MethodInfo:
    try:
        return _METHODS[name]
    except KeyError:
        raise UnknownNameError("method", name, _METHODS) from None


def list_methods() -> list[str]:
    return sorted(_METHODS)


ROTNET = _declare(MethodInfo(
    "rotnet", "RotNet",
    Paper("Unsupervised Representation Learning by Predicting Image Rotations", "Gidaris, Singh, Komodakis",
          "ICLR 2018", "https://arxiv.org/abs/1803.07728"),
    _prose("""
    Every image is shown rotated by 0, 90, 180 or 270 degrees and the network is trained to classify
    which of the four rotations it sees. Telling the rotation apart needs the objects and their usual
    orientation, so the features become semantic without any label.
    """)))
DEEPCLUSTER = _declare(MethodInfo(
    "deepcluster", "DeepCluster",
    Paper("Deep Clustering for Unsupervised Learning of Visual Features", "Caron, Bojanowski, Joulin, Douze",
          "ECCV 2018", "https://arxiv.org/abs/1807.05520"),
    _prose("""
    Training alternates between clustering the features of the whole dataset with k-means and training
    the network to predict each image's cluster as a pseudo-label. The classifier is re-initialised
    after every clustering; empty clusters are re-seeded and images are sampled uniformly over clusters
    so that the labels stay balanced.
    """)))
DEEPERCLUSTER = _declare(MethodInfo(
    "deepercluster", "DeeperCluster",
    Paper("Unsupervised Pre-Training of Image Features on Non-Curated Data", "Caron, Bojanowski, Mairal, Joulin",
          "ICCV 2019", "https://arxiv.org/abs/1905.01278"),
    _prose("""
    The target is a pair (rotation, cluster): rotation prediction combined with hierarchical
    DeepCluster-style clustering, which scales clustering to about 100 million uncurated images.
    """)))
SELA = _declare(MethodInfo(
    "sela", "SeLa",
    Paper("Self-labelling via simultaneous clustering and representation learning", "Asano, Rupprecht, Vedaldi",
          "ICLR 2020", "https://arxiv.org/abs/1911.05371"),
    _prose("""
    Pseudo-labels come from an optimal-transport problem: images are assigned to K clusters with equal
    shares, solved quickly with the Sinkhorn-Knopp algorithm on the network's own predictions, and the
    network is trained with cross-entropy on those labels. Several heads cluster independently.
    """)))
IIC = _declare(MethodInfo(
    "iic", "IIC",
    Paper("Invariant Information Clustering for Unsupervised Image Classification and Segmentation",
          "Ji, Henriques, Vedaldi", "ICCV 2019", "https://arxiv.org/abs/1807.06653"),
    _prose("""
    No pseudo-labels: softmax heads cluster each image and a transformed copy of it, and the network
    maximises the mutual information between the two cluster assignments, which rewards confident,
    consistent predictions that use every cluster equally. An over-clustering head with more clusters
    than classes trains beside the main head.
    """)))
NPID = _declare(MethodInfo(
    "npid", "NPID",
    Paper("Unsupervised Feature Learning via Non-Parametric Instance Discrimination", "Wu, Xiong, Yu, Lin",
          "CVPR 2018", "https://arxiv.org/abs/1805.01978"),
    _prose("""
    Each image is its own class. A memory bank keeps a 128-d L2-normalised embedding per training image;
    the network learns, with noise-contrastive estimation (4,096 negatives, temperature 0.07), to pick
    its own entry among the others, and the bank follows with momentum 0.5.
    """)))
PIRL = _declare(MethodInfo(
    "pirl", "PIRL",
    Paper("Self-Supervised Learning of Pretext-Invariant Representations", "Misra, van der Maaten", "CVPR 2020",
          "https://arxiv.org/abs/1912.01991"),
    _prose("""
    Instead of predicting a transformation, the representation must not change under it: the embedding
    of an image must match the embedding of its jigsaw-shuffled patches and differ from other images'
    embeddings kept in a memory bank (NCE loss).
    """)))
SIMCLR = _declare(MethodInfo(
    "simclr", "SimCLR",
    Paper("A Simple Framework for Contrastive Learning of Visual Representations", "Chen, Kornblith, Norouzi, Hinton",
          "ICML 2020", "https://arxiv.org/abs/2002.05709"),
    _prose("""
    Two random augmentations of each image (crop and resize, colour distortion, blur) go through the
    network and a projection MLP; the NT-Xent contrastive loss pulls the two views of an image together
    and pushes the other images of the batch away.
    """)))
BYOL = _declare(MethodInfo(
    "byol", "BYOL",
    Paper("Bootstrap Your Own Latent: A New Approach to Self-Supervised Learning", "Grill et al.", "NeurIPS 2020",
          "https://arxiv.org/abs/2006.07733"),
    _prose("""
    An online network learns to predict, through a small predictor MLP, the projection that a target
    network gives for another augmentation of the same image. The target's weights are an exponential
    moving average of the online network's; no negative pairs are used.
    """)))
MULTIGRAIN = _declare(MethodInfo(
    "multigrain", "MultiGrain",
    Paper("MultiGrain: a unified image embedding for classes and instances",
          "Berman, Jegou, Vedaldi, Kokkinos, Douze", "arXiv 2019", "https://arxiv.org/abs/1902.05509"),
    _prose("""
    Not self-supervised: the network is trained with class labels (cross-entropy) together with an
    instance-level ranking loss between augmentations of the same image, with generalised-mean (GeM)
    pooling, so that one embedding serves class recognition and copy/instance retrieval.
    """),
    uses_labels=True))
CPC = _declare(MethodInfo(
    "cpc", "CPC v2",
    Paper("Data-Efficient Image Recognition with Contrastive Predictive Coding",
          "Henaff, Srinivas, De Fauw, Razavi, Doersch, Eslami, van den Oord", "ICML 2020",
          "https://arxiv.org/abs/1905.09272"),
    _prose("""
    The image is cut into a grid of overlapping patches, each encoded on its own. A context network that
    sees only the rows above summarises them, and from that summary the network must tell the true
    encoding of a patch a few rows further down from the encodings of other patches and other images
    (InfoNCE). Predicting what is not yet seen from what is makes the features capture what varies
    predictably across an image.
    """)))
PROXYNCA = _declare(MethodInfo(
    "proxynca", "Proxy-NCA",
    Paper("No Fuss Distance Metric Learning using Proxies", "Movshovitz-Attias, Toshev, Leung, Ioffe, Singh",
          "ICCV 2017", "https://arxiv.org/abs/1703.07464"),
    _prose("""
    Not self-supervised: supervised metric learning on class labels. Every class has one learned proxy
    vector, and the NCA loss pulls each image's embedding towards its class's proxy and away from all
    the others, which replaces the sampling of pairs or triplets; distances in the embedding then serve
    retrieval, also of classes not seen in training.
    """),
    uses_labels=True))
JIGSAW = _declare(MethodInfo(
    "jigsaw", "Jigsaw",
    Paper("Unsupervised Learning of Visual Representations by Solving Jigsaw Puzzles", "Noroozi, Favaro",
          "ECCV 2016", "https://arxiv.org/abs/1603.09246"),
    _prose("""
    The image is cut into a 3x3 grid of tiles, shuffled by one of a fixed set of permutations, and the
    network, which encodes every tile on its own before combining them, is trained to name the
    permutation. Putting the pieces back in order needs to know what object parts look like and how they
    are arranged.
    """)))
MULTITASK = _declare(MethodInfo(
    "multitask", "Multi-task self-supervision",
    Paper("Multi-task Self-Supervised Visual Learning", "Doersch, Zisserman", "ICCV 2017",
          "https://arxiv.org/abs/1708.07860"),
    _prose("""
    One trunk learns several pretext tasks at once, each with its own small head, and the task losses
    are summed. Here the tasks that grey still images allow: the relative position of two patches of a
    3x3 grid (one of 8 neighbours, with gaps and jitter so edges cannot give it away), the rotation of
    the image (one of four quarter turns), and exemplar discrimination (which of a fixed set of seed
    images a strongly transformed copy comes from). Every task sees the same grey, identically
    normalised input, so no task can be solved by a shortcut in its own preprocessing.
    """)))
S4L = _declare(MethodInfo(
    "s4l", "S4L-Rotation",
    Paper("S4L: Self-Supervised Semi-Supervised Learning", "Zhai, Oliver, Kolesnikov, Beyer", "ICCV 2019",
          "https://arxiv.org/abs/1905.03670"),
    _prose("""
    Not self-supervised: semi-supervised. A classifier is trained on the labels of a small subset of the
    training images while a second head on the same network predicts which of four quarter turns was
    applied to every image, labelled or not; the rotation loss on the unlabelled images shapes the
    features the few labels alone would not. Its own number is the classifier's test accuracy, set
    beside a network trained on the same labelled images without the rotation loss.
    """),
    uses_labels=True))
EXEMPLAR = _declare(MethodInfo(
    "exemplar", "Exemplar-CNN",
    Paper("Discriminative Unsupervised Feature Learning with Exemplar Convolutional Neural Networks",
          "Dosovitskiy, Fischer, Springenberg, Riedmiller, Brox", "NIPS 2014 / TPAMI 2016",
          "https://arxiv.org/abs/1406.6909"),
    _prose("""
    Every seed image of a fixed set is its own class. The network sees each seed under strong random
    changes of position, scale, rotation, contrast and brightness and is trained to say which seed the
    changed copy came from, so its features must stay the same under those changes while still telling
    thousands of images apart.
    """)))
BIGAN = _declare(MethodInfo(
    "bigan", "BiGAN",
    Paper("Adversarial Feature Learning", "Donahue, Krähenbühl, Darrell", "ICLR 2017",
          "https://arxiv.org/abs/1605.09782"),
    _prose("""
    A generator turns random codes into images, an encoder turns images into codes, and a
    discriminator is shown pairs of an image and a code and must tell a real image with its encoding
    from a generated image with the code it came from. Fooling it forces the encoder to invert the
    generator, so the encoder's features capture what varies between images; only the encoder is kept.
    """)))
COLORIZATION = _declare(MethodInfo(
    "colorization", "Colorization",
    Paper("Colorful Image Colorization", "Zhang, Isola, Efros", "ECCV 2016", "https://arxiv.org/abs/1603.08511"),
    _prose("""
    The network sees only the lightness of a colour photograph and predicts its colours, the two ab
    channels of the Lab colour space, at a quarter of the input resolution: for every output pixel a
    distribution over the quantised in-gamut ab colours, trained against soft targets with rare colours
    weighted up so that it does not settle on greyish browns. Guessing that grass is green and the sky
    blue needs to recognise grass and sky.
    """)))
SPLITBRAIN = _declare(MethodInfo(
    "splitbrain", "Split-Brain Autoencoders",
    Paper("Split-Brain Autoencoders: Unsupervised Learning by Cross-Channel Prediction", "Zhang, Isola, Efros",
          "CVPR 2017", "https://arxiv.org/abs/1611.09842"),
    _prose("""
    The network is split into two halves that never exchange information: one sees the lightness (L) of
    a colour photograph and predicts its colour (ab), the other sees the colour and predicts the
    lightness, each as a classification over quantised values. The features are the two halves'
    features side by side, so together they describe the whole image.
    """)))
