"""BiGAN: learn an encoder by playing the GAN game over (image, code) pairs.

Donahue, Krähenbühl, Darrell, "Adversarial Feature Learning", ICLR 2017
(https://arxiv.org/abs/1605.09782); also one of the three methods Asano, Rupprecht, Vedaldi compare
in "A critical analysis of self-supervision" (https://arxiv.org/abs/1904.13132). A generator G maps a
code z to an image, an encoder E maps an image x to a code, and a discriminator D sees pairs and tells
(x, E(x)) from (G(z), z). At the optimum E inverts G, so E's features describe what makes images
differ; only the encoder's backbone is published.

Facts from the paper and the official code (jeffdonahue/bigan, train_gan.py and train_imagenet.sh)
used here: z is 200-D uniform on [-1, 1] (``--noise u-200``); the encoder is a conv net ending in a
linear layer to z (here on the backbone's pooled features); D reads the image through a conv path, the code through a fully
connected path, and joins them; E and G are trained with the "label-swapped" non-saturating loss --
they minimise D's cross-entropy with the real and generated labels exchanged (``opp_loss_real``,
``opp_loss_gen``, each weighted 1/2), not the saturating ``-D loss`` of the minimax. With ``k = 1`` the
official code updates D, E and G together from the same batch in one step (``update_both``), which is
what the engine's single optimiser step does here: ``forward`` returns one loss whose gradient is D's
loss for D's parameters and E/G's loss for E's and G's (``split_gan_loss``). train_gan.py's
defaults: Adam with lr 2e-4, beta1 0.5, L2 weight decay 2.5e-5, batch 128, 50 epochs at the base rate
then 50 of exponential decay to 1 % of it. The generator ends in a sigmoid ([0, 1] pixels, as the official ``gen_transform`` takes
it), and its images are normalised like real ones before E or D sees them.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn
from torch.func import functional_call
from torch.nn import functional as F
from torch.nn.utils.parametrizations import spectral_norm

from training.engine import FitContext
from training.methods.common import BackboneMethod, crop_flip_augment, heldout_images
from training.methods.heads import feature_dim, pooled_features
from training.recipes import Optimizer, Schedule, method_recipes, paper_recipe, small_recipe, tiny_recipe
from training.transforms import eval_transform
from zoo.registry import InputSpec


def discriminator_loss(real_logits: torch.Tensor, fake_logits: torch.Tensor) -> torch.Tensor:
    """D's cross-entropy: (x, E(x)) pairs are labelled 1, (G(z), z) pairs 0; the two halves averaged."""
    return 0.5 * (F.softplus(-real_logits).mean() + F.softplus(fake_logits).mean())


def encoder_generator_loss(real_logits: torch.Tensor, fake_logits: torch.Tensor) -> torch.Tensor:
    """E's and G's non-saturating loss: D's cross-entropy with the labels swapped (real pairs 0,
    generated pairs 1), so that the gradient stays large while D wins -- the official code's
    ``opp_loss_real`` + ``opp_loss_gen``, weighted 1/2 each."""
    return 0.5 * (F.softplus(real_logits).mean() + F.softplus(-fake_logits).mean())


def discriminator_accuracy(real_logits: torch.Tensor, fake_logits: torch.Tensor) -> torch.Tensor:
    """The fraction of pairs D labels correctly (logit > 0 means "real"); 0.5 is the equilibrium,
    1.0 a discriminator that has won and starves E and G of a useful gradient."""
    hits = torch.cat([(real_logits > 0), (fake_logits <= 0)]).float()
    return hits.mean()


def split_gan_loss(discriminator: nn.Module, real: tuple[torch.Tensor, torch.Tensor],
                   fake: tuple[torch.Tensor, torch.Tensor]) -> tuple[torch.Tensor, ...]:
    """(total, D's loss, E/G's loss, D's logits) of one batch of real (x, E(x)) and fake (G(z), z)
    pairs, where ``total.backward()`` gives D's parameters the gradient of D's loss only and
    everything upstream of the pairs (E, G) the gradient of E/G's loss only: D's loss sees detached
    pairs, E/G's loss sees a detached copy of D's parameters. Two D passes, one backward, one
    optimiser step. The logits (real pairs first) are those D's loss saw."""
    pairs = [torch.cat([r, f]) for r, f in zip(real, fake)]
    n = len(real[0])
    d_logits = discriminator(*(p.detach() for p in pairs)).float()
    frozen = {k: v.detach() for k, v in discriminator.named_parameters()}
    g_logits = functional_call(discriminator, frozen, tuple(pairs)).float()
    d_loss = discriminator_loss(d_logits[:n], d_logits[n:])
    eg_loss = encoder_generator_loss(g_logits[:n], g_logits[n:])
    return d_loss + eg_loss, d_loss, eg_loss, d_logits.detach()


def sample_codes(n: int, dim: int, device: torch.device) -> torch.Tensor:
    """z ~ U[-1, 1]^dim, from torch's global generator (checkpointed, so resumes are bit-identical)."""
    return torch.rand(n, dim, device=device) * 2.0 - 1.0


def upsampling_plan(size: int, max_start: int = 7) -> tuple[int, int]:
    """(start, doublings): the generator starts from a ``start`` x ``start`` map and doubles it
    ``doublings`` times to reach ``size`` (32 -> 4 x 2^3; 64 -> 4 x 2^4; 224 -> 7 x 2^5)."""
    doublings = 0
    while size % 2 == 0 and size // 2 >= 4 and size > max_start:
        size //= 2
        doublings += 1
    if doublings == 0:
        raise ValueError(f"the generator needs an image size that halves to a 4-7 pixel map, got {size}")
    return size, doublings


class Generator(nn.Module):
    """DCGAN-style: a linear layer to a small map, then stride-2 transposed convolutions (BN, ReLU),
    halving the channels each time; a sigmoid gives [0, 1] pixels, normalised like the real images."""

    def __init__(self, latent_dim: int, spec: InputSpec, width: int):
        super().__init__()
        self.start, doublings = upsampling_plan(spec.size)
        chans = [width * 2 ** (doublings - 1 - i) for i in range(doublings)]
        self.project = nn.Sequential(nn.Linear(latent_dim, chans[0] * self.start ** 2, bias=False),
                                     nn.BatchNorm1d(chans[0] * self.start ** 2), nn.ReLU(inplace=True))
        layers: list[nn.Module] = []
        for a, b in zip(chans[:-1], chans[1:]):
            layers += [nn.ConvTranspose2d(a, b, 4, 2, 1, bias=False), nn.BatchNorm2d(b), nn.ReLU(inplace=True)]
        layers.append(nn.ConvTranspose2d(chans[-1], spec.channels, 4, 2, 1))
        self.deconv = nn.Sequential(*layers)
        self.scale = spec.value_range
        self.register_buffer("mean", torch.tensor(spec.mean).view(1, -1, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(spec.std).view(1, -1, 1, 1), persistent=False)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        h = self.project(z).view(len(z), -1, self.start, self.start)
        pixels = torch.sigmoid(self.deconv(h))
        return (pixels * self.scale - self.mean) / self.std


class JointDiscriminator(nn.Module):
    """D(x, z): stride-2 convolutions with leaky ReLU read the image down to a <= 4-pixel map, a
    linear layer reads the code, and two linear layers on both give one logit (the official
    discriminator's layout). No BatchNorm: D runs twice per step (``split_gan_loss``) and its pairs
    mix real and generated images, whose batch statistics would tell them apart."""

    def __init__(self, latent_dim: int, spec: InputSpec, width: int, hidden: int, dropout: float,
                 spectral: bool = False):
        super().__init__()
        layers: list[nn.Module] = []
        c, size = spec.channels, spec.size
        while size > 4:
            out = width * min(2 ** (len(layers) // 2), 8)
            layers += [nn.Conv2d(c, out, 4, 2, 1), nn.LeakyReLU(0.2, inplace=True)]
            c, size = out, size // 2
        self.image = nn.Sequential(*layers, nn.Flatten())
        self.code = nn.Sequential(nn.Linear(latent_dim, hidden), nn.LeakyReLU(0.2, inplace=True))
        self.joint = nn.Sequential(nn.Dropout(dropout), nn.Linear(c * size * size + hidden, hidden),
                                   nn.LeakyReLU(0.2, inplace=True), nn.Dropout(dropout), nn.Linear(hidden, 1))
        if spectral:
            for m in self.modules():
                if isinstance(m, (nn.Conv2d, nn.Linear)):
                    spectral_norm(m)

    def forward(self, x: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        return self.joint(torch.cat([self.image(x), self.code(z)], dim=1)).squeeze(1)


@dataclass(frozen=True)
class BiGANOptions:
    latent_dim: int = 200            # official --noise u-200
    generator_width: int = 64        # channels of G's last hidden layer (doubled towards z)
    discriminator_width: int = 64    # channels of D's first conv (doubled per layer, at most x8)
    discriminator_hidden: int = 1024
    discriminator_dropout: float = 0.0
    # Spectral normalisation of every D layer (Miyato et al. 2018), as BigBiGAN does (Donahue &
    # Simonyan 2019, arXiv 1907.02544); not in the original BiGAN. It keeps the small recipe's D
    # from winning outright in its first steps.
    spectral_norm: bool = False
    # Instance noise (Sønderby et al. 2017, arXiv 1610.04490): Gaussian noise of this std, in
    # normalised pixel units, on every image D sees, real or generated, so that the two image
    # distributions overlap and D cannot win on pixels alone before G has learnt anything.
    image_noise: float = 0.0
    discriminator_lr_scale: float = 1.0  # D's learning rate relative to E's and G's
    augment: str = "crop-flip"       # "none", "crop-flip" or "resized-crop-flip"
    crop_padding: int = 0            # official ImageNet: resize to 72, random 64 crop (no padding)


class BiGAN(BackboneMethod, options=BiGANOptions):
    def build(self, o: BiGANOptions) -> None:
        spec = self.backbone.entry.input
        self.to_code = nn.Linear(feature_dim(self.backbone), o.latent_dim)  # E = to_code . backbone
        self.generator = Generator(o.latent_dim, spec, o.generator_width)
        self.discriminator = JointDiscriminator(o.latent_dim, spec, o.discriminator_width, o.discriminator_hidden,
                                                o.discriminator_dropout, o.spectral_norm)

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        return self.to_code(pooled_features(self.backbone, x))

    def train_transform(self):
        o, spec = self.options, self.backbone.entry.input
        return eval_transform(spec) if o.augment == "none" else crop_flip_augment(spec, o.augment,
                                                                                  crop_padding=o.crop_padding)

    def parameter_groups(self):
        # Lists in module order, never sets: the optimiser's saved state is matched by position.
        d = list(self.discriminator.parameters())
        ids = {id(p) for p in d}
        rest = [p for p in self.parameters() if p.requires_grad and id(p) not in ids]
        return [{"params": rest}, {"params": d, "lr_scale": self.options.discriminator_lr_scale}]

    def pairs(self, x: torch.Tensor):
        """((x, E(x)), (G(z), z)) for a batch of real images and as many fresh codes; the images
        as D sees them (with instance noise), E reads the clean ones."""
        o = self.options
        z = sample_codes(len(x), o.latent_dim, x.device)
        code, generated = self.encode(x), self.generator(z)
        if o.image_noise:  # also in ``evaluate``: D is scored on the inputs it was trained on
            x = x + o.image_noise * torch.randn_like(x)
            generated = generated + o.image_noise * torch.randn_like(generated)
        return (x, code), (generated, z)

    def forward(self, batch: dict) -> dict[str, torch.Tensor]:
        real, fake = self.pairs(batch["x"])
        loss, d_loss, eg_loss, logits = split_gan_loss(self.discriminator, real, fake)
        n = len(batch["x"])
        return {"loss": loss, "d_loss": d_loss.detach(), "eg_loss": eg_loss.detach(),
                "d_acc": discriminator_accuracy(logits[:n], logits[n:])}

    @torch.no_grad()
    def heldout_scores(self, batch: dict) -> torch.Tensor:
        """Per image: [D right on (x, E(x)), D right on a fresh (G(z), z)]."""
        real, fake = self.pairs(batch["x"])
        return torch.stack([self.discriminator(*real) > 0, self.discriminator(*fake) <= 0], 1).float()

    def evaluate(self, ctx: FitContext) -> dict[str, float]:
        """D's accuracy on held-out real pairs and as many generated ones (0.5: E and G fool it)."""
        heldout = heldout_images(self, ctx, "discriminator accuracy")
        if heldout is None:
            return {}
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(self.recipe.seed)
            scores, _ = ctx.map(self.heldout_scores, heldout, eval_transform(self.backbone.entry.input))
        return {"d_acc_real": float(scores[:, 0].mean()), "d_acc_generated": float(scores[:, 1].mean())}


METHOD = BiGAN


def _decay(start: int, n: int) -> Schedule:
    """The official exponential decay, per epoch: the base rate until epoch ``start``, then a
    constant factor per epoch that reaches 1 % in the last of the ``n`` decay epochs."""
    return Schedule("step", milestones=tuple(float(e) for e in range(start + 1, start + n)),
                    gamma=0.01 ** (1.0 / (n - 1)))


_ADAM = Optimizer("adam", lr=2e-4, betas=(0.5, 0.999), weight_decay=2.5e-5)

RECIPES = method_recipes(__name__, {
    # The ImageNet BiGAN as the official code runs it (jeffdonahue/bigan: train_gan.py's defaults,
    # train_imagenet.sh's objective and u-200 codes): AlexNet encoder, batch 128, Adam 2e-4 (beta1
    # 0.5), weight decay 2.5e-5, 50 epochs then 50 of exponential decay to 1 % (the script's 10-class
    # demo runs 200 + 200); a random crop of the resized image (72 -> 64 there, 256 -> 224 here).
    # Not reproduced: the 64-pixel generator and discriminator (ours work at the encoder's 224
    # input); the horizontal flip is ours.
    "paper": paper_recipe(
        model="rotnet_alexnet", epochs=100, batch_size=128, optimizer=_ADAM, schedule=_decay(50, 50),
        options=BiGANOptions(), source="Donahue et al. 2017 (arXiv 1605.09782); jeffdonahue/bigan train_gan.py defaults"),
    # S3L scale: Fashion-MNIST 32x32 grey on the small ResNet, 10,000 images, 2 epochs of 156 steps
    # of 64, bf16; smaller G and D, 50-D codes, no augmentation (the official MNIST set-up), the
    # official first (constant-rate) phase only. With the paper's settings D wins at once (accuracy
    # 1.0 from step 10 on, telling images apart on pixels alone), so D gets spectral norm, dropout
    # 0.2, instance noise 1.0 and the paper's 2e-4 while E and G move 5x faster (1e-3).
    # Measured (seed 0, OMP_NUM_THREADS=1, shared machine): 312 steps in 223-226 s; D's accuracy
    # 0.73 in epoch 1 and 0.54 in epoch 2 (0.45 / 0.43 on held-out real / generated pairs); kNN 66.5
    # (layer3) against random init's 65.5 +- 2.6, inside the noise. Instance noise 0.5 gave 64.5, 1.5
    # gave 65.8.
    "small": small_recipe(
        model="bigan_resnet_small_fmnist", epochs=2, batch_size=64, limit=10_000, heldout_limit=2_000,
        optimizer=Optimizer("adam", lr=1e-3, betas=(0.5, 0.999), weight_decay=2.5e-5),
        checkpoint_every=50, log_every=10,
        options=BiGANOptions(latent_dim=50, generator_width=32, discriminator_width=32, discriminator_hidden=256,
                             discriminator_dropout=0.2, spectral_norm=True, image_noise=1.0,
                             discriminator_lr_scale=0.2, augment="none"),
        source="Donahue et al. 2017, scaled down; D stabilised as the comment says"),
    "tiny": tiny_recipe(
        model="bigan_resnet_small_fmnist", batch_size=32, heldout_limit=64, optimizer=_ADAM,
        options=BiGANOptions(latent_dim=16, generator_width=8, discriminator_width=8, discriminator_hidden=32,
                             augment="none")),
})
