"""``installation train FOLDER --out MODEL.safetensors``: a compact style-based GAN trained on a folder of images.

The generator is StyleGAN-like at a small scale: a mapping network turns z into a style w (so the space a scene
walks is smooth), a learned 4x4 constant is upsampled block by block, and every block's features are scaled and
shifted by w (AdaIN). The discriminator is a plain residual conv net with a minibatch-deviation feature. Losses are
StyleGAN2's (non-saturating logistic, lazy R1 on the reals); DiffAugment (colour, translation, cutout, applied to
reals and fakes alike) keeps the discriminator from memorising a set of a few hundred images. ``augment="ada"``
applies it at a probability adapted by ADA's overfitting heuristic instead; on the 300-image test set it scored
worse after 30 minutes (KID x1000 1149 against 709 with DiffAugment always on), so "always" is the default. An EMA copy of the
generator is what previews and the export use.

A run's folder (``--work``, default ``MODEL.run/`` beside the output) holds ``checkpoint.safetensors`` (everything
needed to resume: nets, optimisers, step, training seconds, random states; tensors plus JSON, so a checkpoint from
anyone loads without running anything; a ``checkpoint.pt`` of an earlier version is read once with torch's
weights-only unpickler), ``preview_*.png`` grids, and ``metrics.jsonl`` with the losses and a KID figure at every
preview. The final EMA generator is written with :func:`installation.decoders.gan.save_generator` (weights and its
declared architecture, ``stylegan-lite``), with its latent size and metadata, for ``[decoder] type = "gan"``.

The quality figure is KID (kernel inception distance's estimator, polynomial kernel) on the features of a small
*random*, fixed-seed conv net (:class:`RandomFeatures`): no pretrained Inception can be downloaded here; random conv
features still respond to colour, edges and layout at several scales, KID is unbiased at the few hundred samples
a small set has, and a fixed seed makes figures comparable between runs. It is a relative figure: compare it with
the untrained generator's (step 0) and with the floor printed at start (one half of the set against the other).
"""

from __future__ import annotations

import argparse
import copy
import json
import logging
import math
import os
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ..decoders.stylegan_lite import EqConv2d, EqLinear, ExportedGenerator, GanConfig, Generator, Mapping, StyleBlock, Synthesis
from ..ops.state import write_atomic

log = logging.getLogger(__name__)

SIZES = (64, 128, 256)


class DBlock(nn.Module):
    """Two 3x3 convs and a 2x average-pool, with a 1x1 residual path (scaled by 1/sqrt 2)."""

    def __init__(self, cin: int, cout: int) -> None:
        super().__init__()
        self.conv1 = EqConv2d(cin, cin, 3)
        self.conv2 = EqConv2d(cin, cout, 3)
        self.skip = EqConv2d(cin, cout, 1, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = F.leaky_relu(self.conv1(x), 0.2)
        y = F.avg_pool2d(F.leaky_relu(self.conv2(y), 0.2), 2)
        return (y + F.avg_pool2d(self.skip(x), 2)) / math.sqrt(2)


class Discriminator(nn.Module):
    """image -> logit: 1x1 from RGB, DBlocks down to 4x4, minibatch std-dev feature, conv, linear."""

    def __init__(self, cfg: GanConfig) -> None:
        super().__init__()
        self.from_rgb = EqConv2d(3, cfg.channels(cfg.size), 1)
        blocks, res = [], cfg.size
        while res > 4:
            blocks.append(DBlock(cfg.channels(res), cfg.channels(res // 2)))
            res //= 2
        self.blocks = nn.Sequential(*blocks)
        c = cfg.channels(4)
        self.conv = EqConv2d(c + 1, c, 3)
        self.fc = nn.Sequential(EqLinear(c * 16, c), nn.LeakyReLU(0.2), EqLinear(c, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.blocks(F.leaky_relu(self.from_rgb(x), 0.2))
        group = min(4, x.shape[0])
        while x.shape[0] % group:
            group -= 1
        y = x.reshape(group, -1, *x.shape[1:])
        std = (y.var(dim=0, unbiased=False) + 1e-8).sqrt().mean(dim=(1, 2, 3))  # one figure per group column
        std = std.repeat(group)[:, None, None, None].expand(-1, 1, 4, 4)
        x = F.leaky_relu(self.conv(torch.cat([x, std], dim=1)), 0.2)
        return self.fc(x.flatten(1))


# -- DiffAugment (Zhao et al. 2020) at an adaptive probability (Karras et al. 2020, ADA) --------------------------


def diff_augment(x: torch.Tensor, p: float = 1.0) -> torch.Tensor:
    """Colour (brightness, saturation, contrast), translation by up to 1/8 and a cutout of half the side, each
    applied to each image with probability ``p``; differentiable, so the generator learns through it."""
    if p <= 0:
        return x
    b, dev = x.shape[0], x.device

    def pick() -> torch.Tensor:
        return (torch.rand(b, 1, 1, 1, device=dev) < p).to(x.dtype)

    x = x + (torch.rand(b, 1, 1, 1, device=dev) - 0.5) * pick()
    mean = x.mean(dim=1, keepdim=True)
    x = (x - mean) * (1 + (torch.rand(b, 1, 1, 1, device=dev) * 2 - 1) * pick()) + mean
    mean = x.mean(dim=(1, 2, 3), keepdim=True)
    x = (x - mean) * (1 + (torch.rand(b, 1, 1, 1, device=dev) - 0.5) * pick()) + mean
    x = _translate(x, 0.125, pick().view(b, 1, 1))
    return _cutout(x, 0.5, pick().view(b, 1, 1))


def _translate(x: torch.Tensor, ratio: float, on: torch.Tensor) -> torch.Tensor:
    b, _, h, w = x.shape
    sh, sw = int(h * ratio + 0.5), int(w * ratio + 0.5)
    tx = torch.randint(-sh, sh + 1, (b, 1, 1), device=x.device) * on.long()
    ty = torch.randint(-sw, sw + 1, (b, 1, 1), device=x.device) * on.long()
    gb, gx, gy = torch.meshgrid(torch.arange(b, device=x.device), torch.arange(h, device=x.device),
                                torch.arange(w, device=x.device), indexing="ij")
    gx = torch.clamp(gx + tx + 1, 0, h + 1)
    gy = torch.clamp(gy + ty + 1, 0, w + 1)
    padded = F.pad(x, [1, 1, 1, 1, 0, 0, 0, 0])
    return padded.permute(0, 2, 3, 1).contiguous()[gb, gx, gy].permute(0, 3, 1, 2)


def _cutout(x: torch.Tensor, ratio: float, on: torch.Tensor) -> torch.Tensor:
    b, _, h, w = x.shape
    ch, cw = int(h * ratio + 0.5), int(w * ratio + 0.5)
    ox = torch.randint(0, h + (1 - ch % 2), (b, 1, 1), device=x.device)
    oy = torch.randint(0, w + (1 - cw % 2), (b, 1, 1), device=x.device)
    gb, gx, gy = torch.meshgrid(torch.arange(b, device=x.device), torch.arange(ch, device=x.device),
                                torch.arange(cw, device=x.device), indexing="ij")
    gx = torch.clamp(gx + ox - ch // 2, 0, h - 1)
    gy = torch.clamp(gy + oy - cw // 2, 0, w - 1)
    mask = torch.ones(b, h, w, dtype=x.dtype, device=x.device)
    mask[gb, gx, gy] = 1 - on.expand(-1, ch, cw)
    return x * mask[:, None]


# -- the quality figure -----------------------------------------------------------------------------------------


class RandomFeatures(nn.Module):
    """A fixed-seed random conv net whose pooled activations at three scales are the KID features (see the module
    doc for why). Input: images in -1..1 of any size (resized to 64)."""

    def __init__(self, seed: int = 1234) -> None:
        super().__init__()
        gen = torch.Generator().manual_seed(seed)
        chans = [3, 32, 64, 128]
        self.convs = nn.ModuleList()
        for cin, cout in zip(chans, chans[1:]):
            conv = nn.Conv2d(cin, cout, 3, stride=2, padding=1)
            with torch.no_grad():
                conv.weight.copy_(torch.randn(conv.weight.shape, generator=gen) / math.sqrt(cin * 9))
                conv.bias.zero_()
            self.convs.append(conv)
        self.requires_grad_(False)

    @torch.no_grad()
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.interpolate(x.float(), size=(64, 64), mode="area") if x.shape[-1] != 64 else x.float()
        feats = [F.adaptive_avg_pool2d(x, 4).flatten(1)]  # the layout of colour
        for conv in self.convs:
            x = F.relu(conv(x))
            feats += [x.mean(dim=(2, 3)), x.std(dim=(2, 3))]
        return torch.cat(feats, dim=1)


def kid(a: np.ndarray, b: np.ndarray, subsets: int = 20, subset_size: int = 100, seed: int = 0) -> float:
    """KID's unbiased MMD^2 with the cubic polynomial kernel, averaged over random subsets (x1000 by convention)."""
    rng = np.random.default_rng(seed)
    m = min(subset_size, len(a), len(b))
    d = a.shape[1]
    total = 0.0
    for _ in range(subsets):
        x = a[rng.choice(len(a), m, replace=False)]
        y = b[rng.choice(len(b), m, replace=False)]
        kxx = (x @ x.T / d + 1) ** 3
        kyy = (y @ y.T / d + 1) ** 3
        kxy = (x @ y.T / d + 1) ** 3
        total += ((kxx.sum() - np.trace(kxx)) + (kyy.sum() - np.trace(kyy))) / (m * (m - 1)) - 2 * kxy.mean()
    return float(total / subsets * 1000)


class KidMeter:
    """Features of the training set computed once (standardised by their own mean/std); KID of generated sets."""

    def __init__(self, reals: torch.Tensor, batch: int = 64) -> None:
        self.net = RandomFeatures()
        self.batch = batch
        raw = self._raw(reals)
        self.mean, self.std = raw.mean(0), raw.std(0) + 1e-6
        self.reals = (raw - self.mean) / self.std

    def _raw(self, images: torch.Tensor) -> np.ndarray:
        return torch.cat([self.net(images[i:i + self.batch]) for i in range(0, len(images), self.batch)]).numpy()

    def features(self, images: torch.Tensor) -> np.ndarray:
        return (self._raw(images) - self.mean) / self.std

    def score(self, images: torch.Tensor) -> float:
        return kid(self.features(images), self.reals)

    def floor(self) -> float:
        """One half of the training set against the other: what a perfect generator of this set would score."""
        idx = np.random.default_rng(1).permutation(len(self.reals))
        half = len(idx) // 2
        return kid(self.reals[idx[:half]], self.reals[idx[half:]], subset_size=min(100, half))


# -- training ---------------------------------------------------------------------------------------------------


def load_set(folder: str | Path, size: int) -> tuple[torch.Tensor, list[tuple[str, str]]]:
    """The folder's images as an N x 3 x size x size float tensor in -1..1 (uint8 kept small until a batch)."""
    from .folder import read_folder

    arr, _, skipped = read_folder(folder, size)
    return torch.from_numpy(arr).permute(0, 3, 1, 2).contiguous(), skipped


def to_unit(x: torch.Tensor) -> torch.Tensor:
    return x.float().div(127.5).sub(1.0)


def grid_png(images: torch.Tensor, path: str | Path, cols: int = 8) -> Path:
    """Save images (-1..1, N x 3 x H x W) as one PNG grid with a 2-pixel gap."""
    from PIL import Image

    n, _, h, w = images.shape
    rows = math.ceil(n / cols)
    canvas = np.full((rows * (h + 2) + 2, cols * (w + 2) + 2, 3), 32, np.uint8)
    arr = ((images.detach().float().clamp(-1, 1) + 1) * 127.5).round().byte().permute(0, 2, 3, 1).numpy()
    for i, img in enumerate(arr):
        r, c = divmod(i, cols)
        canvas[2 + r * (h + 2):2 + r * (h + 2) + h, 2 + c * (w + 2):2 + c * (w + 2) + w] = img
    path = Path(path)
    Image.fromarray(canvas).save(path)
    return path


@dataclass
class TrainOptions:
    folder: str
    out: str
    size: int = 64
    minutes: float = 30.0
    steps: int = 0  # stop after this many steps in all (0 = only the minutes count)
    batch: int = 16
    lr: float = 0.002
    r1_gamma: float = 0.0  # 0 = the StyleGAN2-ADA heuristic 0.0002 * size^2 / batch
    r1_every: int = 4
    augment: str = "always"  # always: DiffAugment on every image; ada: at an adaptive probability; off
    ada_images: int = 5000
    preview_minutes: float = 5.0
    checkpoint_minutes: float = 2.0
    kid_samples: int = 256
    work: str = ""
    device: str = "auto"
    seed: int = 0
    fresh: bool = False
    progress: bool = True


class Trainer:
    """One training run: build or resume, step, preview, checkpoint, export."""

    def __init__(self, opts: TrainOptions) -> None:
        if opts.size not in SIZES:
            raise ValueError(f"--size must be one of {SIZES}, not {opts.size}")
        self.opts = opts
        self.out = Path(opts.out).expanduser()
        self.work = Path(opts.work).expanduser() if opts.work else self.out.with_name(self.out.stem + ".run")
        self.work.mkdir(parents=True, exist_ok=True)
        self.ckpt_path = self.work / "checkpoint.safetensors"
        self.legacy_ckpt = self.work / "checkpoint.pt"  # written by an earlier version (torch.save)
        self.device = torch.device("cuda" if opts.device == "auto" and torch.cuda.is_available()
                                   else ("cpu" if opts.device == "auto" else opts.device))
        data, self.skipped = load_set(opts.folder, opts.size)
        if len(data) < 2:
            raise ValueError(f"{opts.folder}: need at least 2 readable images, found {len(data)}")
        self.data = data
        self.cfg = GanConfig(size=opts.size)
        torch.manual_seed(opts.seed)
        self.G = Generator(self.cfg).to(self.device)
        self.D = Discriminator(self.cfg).to(self.device)
        self.G_ema = copy.deepcopy(self.G).eval().requires_grad_(False)
        self.opt_g = torch.optim.Adam(self.G.parameters(), lr=opts.lr, betas=(0.0, 0.99), eps=1e-8)
        c = opts.r1_every / (opts.r1_every + 1)  # lazy regularisation: keep Adam's moments in step (StyleGAN2)
        self.opt_d = torch.optim.Adam(self.D.parameters(), lr=opts.lr * c, betas=(0.0, 0.99 ** c), eps=1e-8)
        self.r1_gamma = opts.r1_gamma or 0.0002 * opts.size ** 2 / opts.batch
        self.step = 0
        self.seconds = 0.0  # training time so far, across resumes
        self.next_preview = opts.preview_minutes * 60
        self.rng = np.random.default_rng(opts.seed)
        self.preview_z = torch.randn(32, self.cfg.z_dim, generator=torch.Generator().manual_seed(opts.seed + 99))
        self.losses: dict[str, float] = {}
        self.aug_p = 0.0
        self._rt: list[float] = []
        self.resumed = False
        self._last_preview_step = -1
        if (self.ckpt_path.is_file() or self.legacy_ckpt.is_file()) and not opts.fresh:
            self._load()
        self.kid = KidMeter(to_unit(self.data)) if opts.kid_samples else None

    # -- checkpoint ----------------------------------------------------------------------------------------------

    def _state(self) -> tuple[dict[str, torch.Tensor], dict]:
        """(tensors, JSON-able rest): nets, optimiser moments and the torch random state as tensors; config,
        counters, optimiser settings and numpy's random state as JSON."""
        tensors: dict[str, torch.Tensor] = {"torch_rng": torch.get_rng_state()}
        for name in ("G", "D", "G_ema"):
            tensors.update({f"{name}.{k}": v for k, v in getattr(self, name).state_dict().items()})
        info = {"config": asdict(self.cfg), "step": self.step, "seconds": self.seconds,
                "next_preview": self.next_preview, "aug_p": self.aug_p, "rt": list(self._rt),
                "np_rng": self.rng.bit_generator.state, "folder": str(self.opts.folder)}
        for name in ("opt_g", "opt_d"):
            sd = getattr(self, name).state_dict()
            info[name] = {"param_groups": sd["param_groups"], "numbers": {}}
            for idx, entry in sd["state"].items():
                for key, value in entry.items():
                    if isinstance(value, torch.Tensor):
                        tensors[f"{name}.{idx}.{key}"] = value
                    else:
                        info[name]["numbers"][f"{idx}.{key}"] = value
        return {k: v.detach().to("cpu").contiguous() for k, v in tensors.items()}, info

    def save_checkpoint(self) -> Path:
        """Write atomically (:func:`~installation.ops.state.write_atomic`: temporary file, fsync, rename), so a kill
        or a power cut mid-write leaves the previous checkpoint."""
        from safetensors.torch import save

        tensors, info = self._state()
        write_atomic(self.ckpt_path, save(tensors, metadata={"installation": json.dumps(info)}))
        return self.ckpt_path

    def _read_checkpoint(self) -> dict:
        """The checkpoint as one dict (the layout of the earlier torch.save one): safetensors, or an earlier
        version's checkpoint.pt through torch's weights-only unpickler (tensors, containers and numbers only)."""
        if not self.ckpt_path.is_file():
            try:
                return torch.load(self.legacy_ckpt, map_location=self.device, weights_only=True)
            except Exception as e:  # noqa: BLE001 - UnpicklingError for anything but plain data; a damaged file
                raise ValueError(f"{self.legacy_ckpt}: not loaded, it holds more than tensors and numbers (a pickle "
                                 f"could run code) or is damaged ({type(e).__name__}); use --fresh to start over"
                                 ) from None
        from safetensors import safe_open

        try:
            with safe_open(str(self.ckpt_path), "pt", device=str(self.device)) as f:
                info = json.loads((f.metadata() or {})["installation"])
                tensors = {k: f.get_tensor(k) for k in f.keys()}
            state = {**info, "torch_rng": tensors.pop("torch_rng").cpu()}
            for name in ("G", "D", "G_ema"):
                state[name] = {k[len(name) + 1:]: v for k, v in tensors.items() if k.startswith(name + ".")}
            for name in ("opt_g", "opt_d"):
                entries: dict[int, dict] = {}
                for key, value in [*info[name]["numbers"].items(),
                                   *((k[len(name) + 1:], v) for k, v in tensors.items() if k.startswith(name + "."))]:
                    idx, _, field = key.partition(".")
                    entries.setdefault(int(idx), {})[field] = value
                state[name] = {"state": entries, "param_groups": info[name]["param_groups"]}
            return state
        except Exception as e:  # noqa: BLE001 - SafetensorError, missing keys, bad JSON: one line
            raise ValueError(f"{self.ckpt_path}: not a training checkpoint ({type(e).__name__}: {e}); use --fresh "
                             f"to start over") from None

    def _load(self) -> None:
        state = self._read_checkpoint()
        path = self.ckpt_path if self.ckpt_path.is_file() else self.legacy_ckpt
        if state["config"] != asdict(self.cfg):
            raise ValueError(f"{path} was trained with {state['config']}; this run asks for "
                             f"{asdict(self.cfg)} (use --fresh to start over, or another --work folder)")
        self.G.load_state_dict(state["G"])
        self.D.load_state_dict(state["D"])
        self.G_ema.load_state_dict(state["G_ema"])
        self.opt_g.load_state_dict(state["opt_g"])
        self.opt_d.load_state_dict(state["opt_d"])
        torch.set_rng_state(state["torch_rng"])
        self.rng.bit_generator.state = state["np_rng"]
        self.step, self.seconds, self.next_preview = state["step"], state["seconds"], state["next_preview"]
        self.aug_p, self._rt = state["aug_p"], list(state["rt"])
        self.resumed = True
        log.info("resumed %s at step %d (%.1f min trained)", path, self.step, self.seconds / 60)

    # -- one step ------------------------------------------------------------------------------------------------

    def _reals(self) -> torch.Tensor:
        idx = self.rng.integers(0, len(self.data), self.opts.batch)
        x = to_unit(self.data[idx]).to(self.device)
        flip = torch.from_numpy(self.rng.random(self.opts.batch) < 0.5).to(self.device)
        return torch.where(flip[:, None, None, None], x.flip(3), x)

    def _z(self) -> torch.Tensor:
        return torch.randn(self.opts.batch, self.cfg.z_dim, device=self.device)

    def _adapt(self, real_logits: torch.Tensor) -> None:
        """ADA's overfitting heuristic: r_t = E[sign(D(real))] over 4 steps; above 0.6 the discriminator is
        memorising the reals, so augment more; below, less. p can cross 0..1 in ``ada_images`` images."""
        self._rt.append(float(real_logits.sign().mean()))
        if len(self._rt) == 4:
            rt = sum(self._rt) / 4
            self._rt.clear()
            step = 4 * self.opts.batch / self.opts.ada_images
            self.aug_p = min(1.0, max(0.0, self.aug_p + (step if rt > 0.6 else -step)))

    def train_step(self) -> dict[str, float]:
        """One discriminator step (+ lazy R1), one generator step, the EMA and w_avg updates."""
        G, D = self.G, self.D
        reals = self._reals()
        # Discriminator.
        D.requires_grad_(True)
        with torch.no_grad():
            fakes = G(self._z())
        p = self.aug_p if self.opts.augment == "ada" else float(self.opts.augment == "always")
        real_logits = D(diff_augment(reals, p))
        loss_d = F.softplus(D(diff_augment(fakes, p))).mean() + F.softplus(-real_logits).mean()
        self.opt_d.zero_grad(set_to_none=True)
        loss_d.backward()
        r1 = torch.zeros(())
        if self.step % self.opts.r1_every == 0:
            x = diff_augment(reals, p).detach().requires_grad_(True)
            (grad,) = torch.autograd.grad(D(x).sum(), x, create_graph=True)
            r1 = grad.square().sum(dim=(1, 2, 3)).mean()
            (r1 * (self.r1_gamma / 2) * self.opts.r1_every).backward()
        self.opt_d.step()
        self._adapt(real_logits.detach())
        # Generator.
        D.requires_grad_(False)
        w = G.mapping(self._z())
        loss_g = F.softplus(-D(diff_augment(G.synthesis(w), p))).mean()
        self.opt_g.zero_grad(set_to_none=True)
        loss_g.backward()
        self.opt_g.step()
        with torch.no_grad():
            G.w_avg.lerp_(w.mean(0), 0.005)
            # EMA half-life: a tenth of the images seen so far, at most 10k images (StyleGAN2-ADA's ramp-up).
            half_life = min(10_000, max(self.step * self.opts.batch * 0.1, self.opts.batch))
            beta = 0.5 ** (self.opts.batch / half_life)
            for pe, p in zip(self.G_ema.parameters(), G.parameters()):
                pe.lerp_(p, 1 - beta)
            for be, b in zip(self.G_ema.buffers(), G.buffers()):
                be.copy_(b)
        self.step += 1
        self.losses = {"loss_d": loss_d.item(), "loss_g": loss_g.item(), "r1": r1.item(), "aug_p": self.aug_p}
        return self.losses

    # -- previews, quality, export ---------------------------------------------------------------------------

    @torch.no_grad()
    def samples(self, n: int, seed: int = 7) -> torch.Tensor:
        """``n`` images of the EMA generator from a fixed z set (on the CPU)."""
        z = torch.randn(n, self.cfg.z_dim, generator=torch.Generator().manual_seed(seed))
        return torch.cat([self.G_ema(z[i:i + 32].to(self.device)).cpu() for i in range(0, n, 32)])

    def preview(self) -> dict:
        """Write a preview grid named by the training minutes, and the KID figure; one metrics.jsonl line."""
        minutes = self.seconds / 60
        with torch.no_grad():
            imgs = self.G_ema(self.preview_z.to(self.device)).cpu()
        path = grid_png(imgs, self.work / f"preview_{minutes:05.1f}min_step{self.step:06d}.png")
        self._last_preview_step = self.step
        row = {"step": self.step, "minutes": round(minutes, 2), **{k: round(v, 4) for k, v in self.losses.items()},
               "preview": path.name}
        if self.kid is not None:
            row["kid_x1000"] = round(self.kid.score(self.samples(self.opts.kid_samples)), 3)
        with open(self.work / "metrics.jsonl", "a") as fh:
            fh.write(json.dumps(row) + "\n")
        log.info("preview %s%s", path, f" KIDx1000 {row['kid_x1000']}" if "kid_x1000" in row else "")
        return row

    def export(self) -> Path:
        """The EMA generator (with its w_avg truncation) for the GAN decoder, with metadata."""
        from ..decoders.gan import save_generator

        gen = ExportedGenerator(self.cfg, copy.deepcopy(self.G_ema).cpu()).eval()
        meta = {"trained_by": "installation train", "size": self.cfg.size, "steps": self.step,
                "minutes": round(self.seconds / 60, 2), "images": len(self.data),
                "folder": Path(self.opts.folder).name, "config": asdict(self.cfg)}
        self.out.parent.mkdir(parents=True, exist_ok=True)
        return save_generator(gen, self.out, (self.cfg.z_dim,), output_range="tanh", meta=meta)

    def done(self) -> bool:
        o = self.opts
        return (o.steps and self.step >= o.steps) or (o.minutes and self.seconds >= o.minutes * 60)

    def run(self) -> Path:
        """Train until --minutes (or --steps), previewing and checkpointing on the way; export; return the file."""
        from tqdm import tqdm

        o = self.opts
        if self.kid is not None and not self.resumed:
            log.info("KIDx1000 floor (half the set vs the other half): %.3f", self.kid.floor())
            self.preview()  # the untrained generator: the figure to beat
        total = o.steps or None
        bar = tqdm(total=total, initial=self.step, disable=not o.progress, unit="step", dynamic_ncols=True,
                   desc=f"train {o.size}px")
        last_ckpt, last_line = self.seconds, time.monotonic()
        try:
            while not self.done():
                t0 = time.perf_counter()
                losses = self.train_step()
                self.seconds += time.perf_counter() - t0
                bar.update(1)
                bar.set_postfix(min=f"{self.seconds / 60:.1f}", D=f"{losses['loss_d']:.3f}",
                                G=f"{losses['loss_g']:.3f}", refresh=False)
                if not o.progress and time.monotonic() - last_line >= 60:  # no terminal: a log line a minute
                    last_line = time.monotonic()
                    log.info("step %d, %.1f min, loss D %.3f G %.3f", self.step, self.seconds / 60,
                             losses["loss_d"], losses["loss_g"])
                if o.preview_minutes and self.seconds >= self.next_preview:
                    self.preview()
                    self.next_preview += o.preview_minutes * 60
                if self.seconds - last_ckpt >= o.checkpoint_minutes * 60:
                    self.save_checkpoint()
                    last_ckpt = self.seconds
        finally:
            bar.close()
            self.save_checkpoint()
        if o.preview_minutes and self._last_preview_step != self.step:
            self.preview()
        return self.export()


def bench(opts: TrainOptions, steps: int) -> int:
    """Print training steps/s (and images/s) for this folder, size, batch and device; nothing is written."""
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        try:
            t = Trainer(TrainOptions(**{**asdict(opts), "work": tmp, "kid_samples": 0, "fresh": True}))
        except (FileNotFoundError, ValueError) as e:
            print(f"installation: train: {e}", file=sys.stderr)
            return 2
        for _ in range(2):
            t.train_step()
        t0 = time.perf_counter()
        for _ in range(steps):
            t.train_step()
        dt = time.perf_counter() - t0
    row = {"size": opts.size, "batch": opts.batch, "device": str(t.device), "threads": torch.get_num_threads(),
           "steps": steps, "steps_per_s": round(steps / dt, 3), "images_per_s": round(steps * opts.batch / dt, 2),
           "load_avg_1min": round(os.getloadavg()[0], 2)}
    print(json.dumps(row))
    return 0


def main(args: argparse.Namespace) -> int:
    """Run ``installation train``; exit 2 with one line for a bad folder or flag."""
    opts = TrainOptions(folder=args.folder, out=args.out, size=args.size, minutes=args.minutes, steps=args.steps,
                        batch=args.batch, preview_minutes=args.preview_minutes,
                        checkpoint_minutes=args.checkpoint_minutes, kid_samples=args.kid_samples, augment=args.augment,
                        work=args.work,
                        device=args.device, seed=args.seed, fresh=args.fresh, progress=sys.stderr.isatty())
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.bench:
        return bench(opts, args.bench)
    if not opts.out.endswith(".safetensors"):
        print(f"installation: train: --out must end in .safetensors (the generator's weights; .pt2 and .pt files are "
              f"programs that could run code), e.g. --out {Path(opts.out).with_suffix('.safetensors')}: the run "
              f"folder beside it is the same, so an earlier run resumes", file=sys.stderr)
        return 2
    if opts.minutes <= 0 and opts.steps <= 0:
        print("installation: train: give --minutes or --steps above 0", file=sys.stderr)
        return 2
    try:
        trainer = Trainer(opts)
    except (FileNotFoundError, ValueError) as e:
        print(f"installation: train: {e}", file=sys.stderr)
        return 2
    for name, why in trainer.skipped:
        log.warning("skipped %s (%s)", name, why)
    log.info("training on %d images at %dpx on %s (%s); run folder %s", len(trainer.data), opts.size,
             trainer.device, "resumed" if trainer.resumed else "fresh", trainer.work)
    path = trainer.run()
    print(f"wrote {path} ({trainer.step} steps, {trainer.seconds / 60:.1f} min); previews and metrics in "
          f"{trainer.work}")
    return 0
