"""Training losses of both head families: non-saturating logistic GAN loss and its regularisers.

Conventions: images are float NCHW in [-1, 1], masks N1HW in [0, 1], camera labels the 25-float labels of
``training.cameras``. The discriminator reads a dict of input groups (``D.inputs``: 'image', optionally 'image_raw' and
'image_mask'; see ``training.networks.discriminator.HeadDiscriminator``).

Terms, by phase (``accumulate_gradients`` calls ``backward`` itself, scaled by the ``gain`` the loop passes, which is
the regularisation interval for the lazy phases Greg / Dreg):

- Gmain: softplus(−D(G(z, c_cond; c), c)); Gaussian regularisers (``training.gaussian_regularizers``) for Gaussian
  heads; camera_offset_reg · ‖batch mean of the self-adaptation offset‖² for volumetric heads that predict offsets.
- Greg (volumetric, density_reg > 0): density_reg · mean |σ(x) − σ(x + ε)| with x uniform in the tri-grid box and
  ε ~ N(0, density_reg_p_dist²), σ the raw density of ``G.sample``.
- Dmain: softplus(D(fake)) + softplus(−D(real)).
- Dreg: R1, γ_g/2 · ‖∇_{x_g} Σ D(real)‖² per input group g, with r1_gamma for 'image' and 'image_raw' and
  r1_gamma_mask for 'image_mask'. Gradients are taken with respect to the groups as they enter the loss (before blur and
  augmentation).

Generator runs: the conditioning camera c_cond is, per sample and with probability ``gpc_swap_prob(cur_nimg)``,
another sample's camera (generator pose conditioning); the rendering camera and D's label stay the sample's own.
Volumetric heads with a background generator draw the background, per sample with probability background_swap_prob,
from another sample's ws. Style mixing replaces, per sample with probability style_mixing_prob, the ws from a random
layer on with those of a second z (mapped with the same c_cond).

Real inputs: 'image_raw' is the real image resized (antialiased) to the raw resolution (volumetric: the neural
rendering resolution; Gaussian: the render resolution), 'image_mask' the dataset mask resized likewise, so real and fake
groups carry the same amount of detail. The real image itself is resized to D's resolution when they differ.

Blur (design choice, unlike EG3D/PanoHead, which blur the real raw image but not the fake one and never the mask):
every group D reads, real and fake alike, is blurred with the same σ, given in pixels of the final image and scaled by
each group's resolution relative to it, so every group loses the same detail. The kernel has weights 2^(−(t/σ)²) for
integer t in [−⌊3σ⌋, ⌊3σ⌋] (σ is the half width at half maximum) and is renormalised over the pixels inside the image,
so borders are not darkened. With an augment pipe, the groups are resized to D's resolution, stacked in D's order and
augmented together (``training.augment.AugmentPipe``): one geometric transform keeps them aligned, one colour transform
reaches the image and the raw image (``color_channels``), the mask gets none; D then reads them at its resolution.

Every term is reported with ``torch_utils.training_stats.report`` (names in ``accumulate_gradients``); real logit signs
('Loss/signs/real') drive the ADA heuristic.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from dnnlib import UserError
from torch_utils import training_stats
from torch_utils.ops.filtered_resize import filtered_resize
from training.gaussian_regularizers import GaussianRegularizerConfig, gaussian_regularizers
from training.networks.gaussian_head import GaussianHeadGenerator
from training.networks.volumetric_head import VolumetricHeadGenerator

PHASES = ("Gmain", "Greg", "Gboth", "Dmain", "Dreg", "Dboth")
DENSITY_REG_POINTS = 1000  # points per head (and as many jittered copies), as EG3D
_PROBABILITIES = ("gpc_prob", "style_mixing_prob", "background_swap_prob")
_INTERVALS = ("r1_interval", "density_reg_interval")


@dataclass(frozen=True)
class LossConfig:
    """Loss weights and schedules. Fields of one family are ignored by the other.

    Both families: r1_gamma (image and raw groups), r1_gamma_mask (mask group), r1_interval (lazy R1, the loop's Dreg
    interval), blur_init_sigma / blur_fade_kimg (blur of D's inputs fading linearly to 0), gpc_prob / gpc_fade_kimg
    (pose-conditioning swap probability fading linearly from 1 to gpc_prob), style_mixing_prob.
    Volumetric heads: density_reg (0 = off), density_reg_interval (the loop's Greg interval), density_reg_p_dist
    (std of the jitter, world units), background_swap_prob (needs a background generator), camera_offset_reg (used when
    the generator predicts camera offsets).
    Gaussian heads: position_reg, scale_reg, opacity_beta_reg, uv_tv_reg (weights; 0 = off), uv_tv_threshold (alpha
    above which a pixel counts as foreground in the UV total variation).
    Defaults: EG3D/GGHead stage 1 (γ 1, blur 10 → 0 over 200 kimg, GPC 1 → 0.5 over 1000 kimg, density 0.25 every 4,
    jitter 0.004) and PanoHead's camera-offset weight 10.
    """

    r1_gamma: float = 1.0
    r1_gamma_mask: float = 1.0
    r1_interval: int = 16
    blur_init_sigma: float = 10.0
    blur_fade_kimg: float = 200.0
    gpc_prob: float = 0.5
    gpc_fade_kimg: float = 1000.0
    style_mixing_prob: float = 0.0
    density_reg: float = 0.25
    density_reg_interval: int = 4
    density_reg_p_dist: float = 0.004
    background_swap_prob: float = 0.0
    camera_offset_reg: float = 10.0
    position_reg: float = 0.1
    scale_reg: float = 0.05
    opacity_beta_reg: float = 0.0
    uv_tv_reg: float = 0.0
    uv_tv_threshold: float = 0.1

    def __post_init__(self) -> None:
        for field in dataclasses.fields(self):
            value = getattr(self, field.name)
            if field.name in _INTERVALS:
                if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                    raise UserError(f"LossConfig.{field.name}: expected an int >= 1, got {value!r}")
            elif isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) \
                    or value < 0:
                raise UserError(f"LossConfig.{field.name}: expected a finite number >= 0, got {value!r}")
        for name in _PROBABILITIES:
            if getattr(self, name) > 1:
                raise UserError(f"LossConfig.{name}: expected a probability in [0, 1], got {getattr(self, name)}")
        if not 0 < self.uv_tv_threshold < 1:
            raise UserError(f"LossConfig.uv_tv_threshold: expected a value in (0, 1), got {self.uv_tv_threshold}")

    def gaussian_regularizer_config(self) -> GaussianRegularizerConfig:
        """The weights of the Gaussian regularisers as ``training.gaussian_regularizers`` takes them."""
        return GaussianRegularizerConfig(position=self.position_reg, scale=self.scale_reg,
                                         opacity_beta=self.opacity_beta_reg, uv_tv=self.uv_tv_reg,
                                         uv_tv_alpha_threshold=self.uv_tv_threshold)


# ---------------------------------------------------------------------------------------------------------------------
# Schedules and pure helpers


def blur_sigma(cur_nimg: int, init_sigma: float, fade_kimg: float) -> float:
    """Blur σ (pixels of the final image) after ``cur_nimg`` images: init_sigma fading linearly to 0 at fade_kimg."""
    if fade_kimg <= 0:
        return 0.0
    return max(1.0 - cur_nimg / (fade_kimg * 1e3), 0.0) * init_sigma


def gpc_swap_prob(cur_nimg: int, final_prob: float, fade_kimg: float) -> float:
    """Probability of swapping a sample's conditioning camera: 1 at the start, final_prob from fade_kimg on."""
    alpha = 1.0 if fade_kimg <= 0 else min(cur_nimg / (fade_kimg * 1e3), 1.0)
    return (1.0 - alpha) + alpha * final_prob


def swap_with_previous(x: Tensor, prob: float) -> Tensor:
    """x [N, ...] with each row i replaced, independently with probability ``prob``, by row i − 1 (cyclically)."""
    swap = torch.rand(x.shape[0], device=x.device) < prob
    return torch.where(swap.view(-1, *[1] * (x.ndim - 1)), x.roll(1, dims=0), x)


def _blur_matrix(size: int, sigma: float, radius: int, like: Tensor) -> Tensor:
    """[size, size] 1-D blur operator: weights 2^(−((i − j)/σ)²) for |i − j| ≤ radius, rows summing to 1."""
    idx = torch.arange(size, device=like.device, dtype=like.dtype)
    offset = idx[:, None] - idx[None, :]
    weights = torch.exp2(-(offset / sigma).square()) * (offset.abs() <= radius)
    return weights / weights.sum(dim=1, keepdim=True)


def blur_images(x: Tensor, sigma: float) -> Tensor:
    """Blur x [N, C, H, W] separably with weights 2^(−(t/σ)²), t in [−⌊3σ⌋, ⌊3σ⌋], renormalised inside the image.

    σ is the half width at half maximum in pixels; below 1/3 (no taps besides the centre) x is returned unchanged.
    """
    radius = math.floor(3 * sigma)
    if radius < 1:
        return x
    rows = _blur_matrix(x.shape[2], sigma, radius, x)
    cols = _blur_matrix(x.shape[3], sigma, radius, x)
    return rows @ x @ cols.T


def r1_penalties(logits: Tensor, groups: dict[str, Tensor]) -> dict[str, Tensor]:
    """‖∇_{x_g} Σ logits‖² per sample [N] for each input group x_g [N, C, H, W] (which must require grad).

    The graph is kept (create_graph), so the penalties can be back-propagated into D's parameters.
    """
    grads = torch.autograd.grad(logits.sum(), list(groups.values()), create_graph=True)
    return {key: grad.square().sum(dim=(1, 2, 3)) for key, grad in zip(groups, grads, strict=True)}


# ---------------------------------------------------------------------------------------------------------------------
# The loss


class HeadGANLoss:
    """Losses of a head generator G (``GaussianHeadGenerator`` or ``VolumetricHeadGenerator``) and a discriminator D
    that reads a dict of input groups (``D.inputs``, ``D.img_resolution``). See the module docstring.

    G and D may be wrapped (DDP): attributes are read from ``.module`` when present; D is called through its forward,
    G through the unwrapped module's ``mapping`` / ``camera_offset`` / ``synthesis`` / ``sample``.
    ``augment_pipe``: None or a module ``(images [N, C, R, R], color_channels) -> images`` (colour transforms on the
    first ``color_channels`` channels, read as RGB triples; geometry on all), e.g. ``training.augment.AugmentPipe``.
    """

    def __init__(self, G: torch.nn.Module, D: torch.nn.Module, config: LossConfig,
                 augment_pipe: torch.nn.Module | None = None):
        self.G, self.D, self.config, self.augment_pipe = G, D, config, augment_pipe
        self._G = getattr(G, "module", G)
        self._D = getattr(D, "module", D)
        if not isinstance(self._G, (GaussianHeadGenerator, VolumetricHeadGenerator)):
            raise UserError(f"HeadGANLoss: G must be a GaussianHeadGenerator or VolumetricHeadGenerator, got "
                            f"{type(self._G).__name__}")
        self.volumetric = isinstance(self._G, VolumetricHeadGenerator)
        self.has_background = hasattr(self._G, "bcg_synthesis")  # both families name their background generator so
        if config.background_swap_prob > 0 and not self.has_background:
            raise UserError("LossConfig.background_swap_prob > 0 needs a generator with a background generator "
                            "(VolumetricHeadConfig.background or GaussianHeadConfig.background_generator)")
        self.inputs = tuple(self._D.inputs)
        self.gammas = {"image": config.r1_gamma, "image_raw": config.r1_gamma, "image_mask": config.r1_gamma_mask}
        self.gaussian_regs = None if self.volumetric else config.gaussian_regularizer_config()

    @property
    def g_reg_interval(self) -> int | None:
        """Interval of the lazy Greg phase (density regularisation), None when there is nothing to regularise."""
        if self.volumetric and self.config.density_reg > 0:
            return self.config.density_reg_interval
        return None

    @property
    def d_reg_interval(self) -> int | None:
        """Interval of the lazy Dreg phase (R1), None when every group D reads has γ = 0."""
        if any(self.gammas[key] > 0 for key in self.inputs):
            return self.config.r1_interval
        return None

    def accumulate_gradients(self, phase: str, real_img: dict[str, Tensor], real_c: Tensor, gen_z: Tensor,
                             gen_c: Tensor, gain: float, cur_nimg: int, render_kwargs: dict) -> None:
        """Back-propagate one phase's loss (times ``gain``) into G's (G phases) or D's (D phases) parameters.

        real_img: 'image' [N, 3, R, R] in [-1, 1] and, when D reads masks, 'image_mask' [N, 1, R, R] in [0, 1];
        real_c: [N, 25] labels of the reals; gen_z: [N, z_dim]; gen_c: [N, 25] rendering cameras of the fakes;
        cur_nimg: images seen so far (drives the blur and pose-conditioning schedules); render_kwargs: passed to
        ``G.synthesis`` (volumetric: neural_rendering_resolution, ...; Gaussian: render_resolution,
        sample_resolution, ...). Phases with nothing to do (Greg without density regularisation, Dreg with γ = 0)
        return at once; Gboth / Dboth then run only their main part.

        Reports: Loss/scores/{fake,real}, Loss/signs/{fake,real}, Loss/G/loss, Loss/G/{position,scale,opacity_beta,
        uv_tv,camera_offset}, Loss/G/density_reg, Loss/D/loss, Loss/r1_penalty/<group>, Loss/D/reg.
        """
        if phase not in PHASES:
            raise UserError(f"accumulate_gradients: phase must be one of {PHASES}, got {phase!r}")
        if self.g_reg_interval is None:
            phase = {"Greg": "none", "Gboth": "Gmain"}.get(phase, phase)
        if self.d_reg_interval is None:
            phase = {"Dreg": "none", "Dboth": "Dmain"}.get(phase, phase)
        sigma = blur_sigma(cur_nimg, self.config.blur_init_sigma, self.config.blur_fade_kimg)
        if phase in ("Gmain", "Gboth"):
            self._g_main(gen_z, gen_c, gain, cur_nimg, sigma, render_kwargs)
        if phase in ("Greg", "Gboth"):
            self._g_density_reg(gen_z, gen_c, gain, cur_nimg)
        loss_fake = None
        if phase in ("Dmain", "Dboth"):
            loss_fake = self._d_fake(gen_z, gen_c, gain, cur_nimg, sigma, render_kwargs)
        if phase in ("Dmain", "Dreg", "Dboth"):
            self._d_real(real_img, real_c, gain, sigma, render_kwargs, main=phase != "Dreg",
                         reg=phase != "Dmain", loss_fake=loss_fake)

    # --- generator -----------------------------------------------------------------------------------------------

    def _mapping(self, z: Tensor, c: Tensor, cur_nimg: int, update_emas: bool) -> Tensor:
        """ws [N, num_ws, w_dim] of z with pose-conditioning swaps of c [N, 25] and style mixing."""
        cfg = self.config
        c_cond = swap_with_previous(c, gpc_swap_prob(cur_nimg, cfg.gpc_prob, cfg.gpc_fade_kimg))
        ws = self._G.mapping(z, c_cond, update_emas=update_emas)
        num_ws = ws.shape[1]
        if cfg.style_mixing_prob > 0 and num_ws > 1:
            cutoff = torch.randint(1, num_ws, (z.shape[0],), device=z.device)
            mixing = torch.rand(z.shape[0], device=z.device) < cfg.style_mixing_prob
            cutoff = torch.where(mixing, cutoff, torch.full_like(cutoff, num_ws))
            ws_mix = self._G.mapping(torch.randn_like(z), c_cond)
            take = torch.arange(num_ws, device=z.device)[None, :] >= cutoff[:, None]  # [N, num_ws]
            ws = torch.where(take[..., None], ws_mix, ws)
        return ws

    def run_generator(self, z: Tensor, c: Tensor, cur_nimg: int, render_kwargs: dict, update_emas: bool = False,
                      render_uv: bool = False) -> dict:
        """G's output dict for latents z [N, z_dim] rendered from cameras c [N, 25] (the training-time generator run:
        pose-conditioning swap, style mixing, background swap, camera self-adaptation)."""
        ws = self._mapping(z, c, cur_nimg, update_emas)
        extra = {}
        if self.has_background and self.config.background_swap_prob > 0:
            extra["ws_background"] = swap_with_previous(ws, self.config.background_swap_prob)
        if not self.volumetric:
            return self._G.synthesis(ws, c, render_uv=render_uv, **extra, **render_kwargs)
        offset = self._G.camera_offset(z, c, update_emas=update_emas)
        return self._G.synthesis(ws, c, camera_offset=offset, **extra, **render_kwargs)

    def _g_main(self, gen_z: Tensor, gen_c: Tensor, gain: float, cur_nimg: int, sigma: float,
                render_kwargs: dict) -> None:
        cfg = self.config
        render_uv = self.gaussian_regs is not None and cfg.uv_tv_reg > 0
        out = self.run_generator(gen_z, gen_c, cur_nimg, render_kwargs, render_uv=render_uv)
        logits = self.run_discriminator({key: out[key] for key in self.inputs}, gen_c, sigma)
        training_stats.report("Loss/scores/fake", logits)
        training_stats.report("Loss/signs/fake", logits.sign())
        loss = F.softplus(-logits)
        training_stats.report("Loss/G/loss", loss)
        total = loss.mean()
        if self.gaussian_regs is not None:
            for name, term in gaussian_regularizers(out, self.gaussian_regs).items():
                training_stats.report(f"Loss/G/{name}", term)
                total = total + term.mean()
        if out.get("camera_offset") is not None and cfg.camera_offset_reg > 0:
            term = cfg.camera_offset_reg * out["camera_offset"].mean(dim=0).square().sum()
            training_stats.report("Loss/G/camera_offset", term)
            total = total + term
        self._backward(total * gain, self.G)

    def _g_density_reg(self, gen_z: Tensor, gen_c: Tensor, gain: float, cur_nimg: int) -> None:
        cfg = self.config
        ws = self._mapping(gen_z, gen_c, cur_nimg, update_emas=False)
        half = self._G.config.render.box_warp / 2
        points = (torch.rand(gen_z.shape[0], DENSITY_REG_POINTS, 3, device=ws.device, dtype=ws.dtype) * 2 - 1) * half
        jittered = points + torch.randn_like(points) * cfg.density_reg_p_dist
        sigma, _ = self._G.sample(torch.cat([points, jittered], dim=1), ws)
        sigma_points, sigma_jittered = sigma.split(DENSITY_REG_POINTS, dim=1)
        loss = cfg.density_reg * (sigma_points - sigma_jittered).abs().mean()
        training_stats.report("Loss/G/density_reg", loss)
        self._backward(loss * gain, self.G)

    # --- discriminator -------------------------------------------------------------------------------------------

    def raw_resolution(self, render_kwargs: dict) -> int:
        """Side of the raw image and mask of the fakes under ``render_kwargs`` (the reals' raw/mask groups match)."""
        if self.volumetric:
            return render_kwargs.get("neural_rendering_resolution", self._G.config.neural_rendering_resolution)
        return render_kwargs.get("render_resolution", self._G.config.render_resolution)

    def real_groups(self, real_img: dict[str, Tensor], render_kwargs: dict) -> dict[str, Tensor]:
        """D's input groups for the reals: image at D's resolution, raw image and mask at the raw resolution."""
        if "image" not in real_img:
            raise UserError(f"HeadGANLoss: the real batch has no 'image' (keys: {sorted(real_img)})")
        image = real_img["image"]
        if image.shape[-1] != self._D.img_resolution:
            image = filtered_resize(image, self._D.img_resolution)
        groups = {"image": image}
        raw_resolution = self.raw_resolution(render_kwargs)
        if "image_raw" in self.inputs:
            groups["image_raw"] = filtered_resize(real_img["image"], raw_resolution)
        if "image_mask" in self.inputs:
            if "image_mask" not in real_img:
                raise UserError("HeadGANLoss: the discriminator reads masks ('image_mask' in its inputs), but the real "
                                "batch has none; train with a mask dataset or a discriminator without the mask group")
            groups["image_mask"] = filtered_resize(real_img["image_mask"], raw_resolution)
        return groups

    def run_discriminator(self, groups: dict[str, Tensor], c: Tensor, sigma: float) -> Tensor:
        """Logits [N, 1] of D on input groups blurred with σ (pixels of 'image'; scaled per group) and augmented."""
        resolution = groups["image"].shape[-1]
        groups = {key: blur_images(x, sigma * x.shape[-1] / resolution) for key, x in groups.items()}
        if self.augment_pipe is not None:
            keys = list(groups)
            parts = [x if x.shape[-1] == resolution else filtered_resize(x, resolution) for x in groups.values()]
            channels = [x.shape[1] for x in parts]
            rgb = sum(c for key, c in zip(keys, channels, strict=True) if key != "image_mask")
            stacked = self.augment_pipe(torch.cat(parts, dim=1), color_channels=rgb)
            groups = dict(zip(keys, stacked.split(channels, dim=1), strict=True))
        return self.D(groups, c)

    def _d_fake(self, gen_z: Tensor, gen_c: Tensor, gain: float, cur_nimg: int, sigma: float,
                render_kwargs: dict) -> Tensor:
        """softplus(D(fake)) back-propagated into D; returns the per-sample loss [N, 1] (for the report)."""
        with torch.no_grad():
            out = self.run_generator(gen_z, gen_c, cur_nimg, render_kwargs, update_emas=True)
        logits = self.run_discriminator({key: out[key] for key in self.inputs}, gen_c, sigma)
        training_stats.report("Loss/scores/fake", logits)
        training_stats.report("Loss/signs/fake", logits.sign())
        loss = F.softplus(logits)
        self._backward(loss.mean() * gain, self.D)
        return loss.detach()

    def _d_real(self, real_img: dict[str, Tensor], real_c: Tensor, gain: float, sigma: float, render_kwargs: dict,
                main: bool, reg: bool, loss_fake: Tensor | None) -> None:
        """softplus(−D(real)) (main) and R1 (reg) in one pass over the reals."""
        groups = {key: x.detach().requires_grad_(reg) for key, x in self.real_groups(real_img, render_kwargs).items()}
        logits = self.run_discriminator(groups, real_c, sigma)
        training_stats.report("Loss/scores/real", logits)
        training_stats.report("Loss/signs/real", logits.sign())
        total = logits.sum() * 0  # keeps every parameter D used in the graph, even where R1 does not depend on it
        if main:
            loss = F.softplus(-logits)
            training_stats.report("Loss/D/loss", loss if loss_fake is None else loss + loss_fake)
            total = total + loss.mean()
        if reg:
            penalties = r1_penalties(logits, groups)
            loss_r1 = logits.new_zeros(logits.shape[0])
            for key, penalty in penalties.items():
                training_stats.report(f"Loss/r1_penalty/{key}", penalty)
                loss_r1 = loss_r1 + self.gammas[key] / 2 * penalty
            training_stats.report("Loss/D/reg", loss_r1)
            total = total + loss_r1.mean()
        self._backward(total * gain, self.D)

    @staticmethod
    def _backward(loss: Tensor, module: torch.nn.Module) -> None:
        """loss.backward() accumulating only into ``module``'s trainable parameters (the other network is untouched)."""
        params = [p for p in module.parameters() if p.requires_grad]
        if params:
            loss.backward(inputs=params)
