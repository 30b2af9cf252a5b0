"""Render views for the tools: parsing ``--views`` / ``--pose-cond`` / ``--seeds`` and turning (yaw, pitch) into labels.

Angles here are geometric and in degrees (``training.cameras``): yaw 0 = frontal, yaw > 0 = camera moved toward +x
(the subject's left), ±180 = back view; pitch > 0 = camera above the head, looking down. Cameras orbit a pivot at a
radius and look at it, with the 25-float labels of ``training.cameras``.
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence

import torch

from dnnlib import UserError
from training.cameras import DEFAULT_RADIUS, FFHQ_FOCAL, lookat_labels, pitch_to_v

# EG3D's sample views span yaw ±0.4 rad around the front; 'ffhq' takes five evenly spaced yaws over that range, with
# the camera slightly above the head as EG3D's v = pi/2 - 0.2 (a geometric pitch of asin(0.4 / pi) ≈ 7.3°).
FFHQ_YAWS_DEG = tuple(math.degrees(0.2 * k) for k in (-2, -1, 0, 1, 2))
FFHQ_PITCH_DEG = math.degrees(math.asin(0.4 / math.pi))
DEFAULT_360_VIEWS = 8
_NUMBER = r"[-+]?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?"
_PAIR = re.compile(rf"\s*({_NUMBER})\s*:\s*({_NUMBER})\s*")
_SEED_RANGE = re.compile(r"\s*(\d+)\s*(?:-\s*(\d+)\s*)?")


def parse_seeds(spec: str, option: str = "--seeds") -> list[int]:
    """'0-7,12' → [0, 1, ..., 7, 12]: comma-separated non-negative ints or inclusive ranges a-b (a <= b)."""
    seeds: list[int] = []
    for part in spec.split(","):
        match = _SEED_RANGE.fullmatch(part)
        if match is None:
            raise UserError(f"{option}: expected comma-separated seeds or ranges such as '0-7,12', got {spec!r}")
        first = int(match.group(1))
        last = first if match.group(2) is None else int(match.group(2))
        if last < first:
            raise UserError(f"{option}: range '{part.strip()}' ends before it starts")
        seeds.extend(range(first, last + 1))
    return seeds


def parse_views(spec: str, option: str = "--views") -> list[tuple[float, float]]:
    """(yaw, pitch) pairs in degrees from a views spec.

    'front': one frontal view; 'ffhq': five yaws over EG3D's ±0.4 rad range (see ``FFHQ_YAWS_DEG``); '360': 8 views all
    around (yaw 0, 45, ..., 315 at pitch 0), '360/N': N such views; otherwise 'yaw:pitch,yaw:pitch,...' in degrees.
    """
    text = spec.strip().lower()
    if text == "front":
        return [(0.0, 0.0)]
    if text == "ffhq":
        return [(yaw, FFHQ_PITCH_DEG) for yaw in FFHQ_YAWS_DEG]
    if text == "360" or text.startswith("360/"):
        count = text[4:] if text != "360" else str(DEFAULT_360_VIEWS)
        if not count.isdigit() or int(count) < 1:
            raise UserError(f"{option}: '360/N' needs a positive integer N, got {spec!r}")
        return [(360.0 * k / int(count), 0.0) for k in range(int(count))]
    views = []
    for part in spec.split(","):
        match = _PAIR.fullmatch(part)
        if match is None:
            raise UserError(f"{option}: expected 'front', 'ffhq', '360', '360/N' or a list 'yaw:pitch,...' in degrees "
                            f"(e.g. '0:0,30:10'), got {spec!r}")
        views.append(_check_angles(float(match.group(1)), float(match.group(2)), part, option))
    return views


def parse_angle_pair(text: str, option: str, separator: str = ",") -> tuple[float, float]:
    """'yaw<separator>pitch' in degrees → (yaw, pitch); pitch must lie in [-90, 90]."""
    parts = text.split(separator)
    try:
        yaw, pitch = (float(p) for p in parts)
    except ValueError:
        raise UserError(f"{option}: expected 'yaw{separator}pitch' in degrees, got {text!r}") from None
    return _check_angles(yaw, pitch, text, option)


def _check_angles(yaw: float, pitch: float, text: str, option: str) -> tuple[float, float]:
    if not (math.isfinite(yaw) and math.isfinite(pitch)) or abs(pitch) > 90:
        raise UserError(f"{option}: need finite angles with pitch in [-90, 90] degrees, got {text.strip()!r}")
    return yaw, pitch


def view_labels(views: Sequence[tuple[float, float]], pivot: Sequence[float], radius: float = DEFAULT_RADIUS,
                focal: float = FFHQ_FOCAL, device: torch.device | str | None = None) -> torch.Tensor:
    """[V, 25] labels of cameras at (yaw, pitch) degrees on a sphere of ``radius`` around ``pivot`` (world [3]),
    looking at the pivot, with normalised ``focal``."""
    yaw = torch.tensor([math.radians(y) for y, _ in views], dtype=torch.float64)
    v = torch.tensor([pitch_to_v(math.radians(p)) for _, p in views], dtype=torch.float64)
    labels = lookat_labels(yaw + math.pi / 2, v, radius=radius, pivot=pivot, focal=focal, dtype=torch.float64)
    return labels.to(device=device, dtype=torch.float32)
