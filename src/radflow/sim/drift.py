"""Synthetic acquisition drift injected into pixels before they are sent: brightness, contrast, noise, blur.

A drift is written ``brightness=0.3,contrast=0.7,noise=0.05,blur=1.5`` on the command line. Each
parameter is a pure array transform on intensities scaled to [0, 1]; they run in a fixed order that
follows a real acquisition chain (optics blur, then exposure/windowing, then sensor noise), so the
same spec always means the same images. Names are checked with a "did you mean" hint.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np
from scipy.ndimage import gaussian_filter

from radflow.errors import ConfigError, did_you_mean

__all__ = ["DRIFT_PARAMS", "DriftSpec", "apply_drift", "parse_drift"]

DRIFT_PARAMS: dict[str, str] = {
    "brightness": "additive shift of intensity as a fraction of full scale, -1..1 (0 = none)",
    "contrast": "scale of intensity around the image mean, > 0 (1 = none)",
    "noise": "standard deviation of added gaussian noise as a fraction of full scale, 0..1 (0 = none)",
    "blur": "gaussian blur sigma in pixels, 0..50 (0 = none)",
}
_RANGES: dict[str, tuple[float, float, bool]] = {
    # name: (low, high, low is exclusive)
    "brightness": (-1.0, 1.0, False),
    "contrast": (0.0, 10.0, True),
    "noise": (0.0, 1.0, False),
    "blur": (0.0, 50.0, False),
}


@dataclass(frozen=True)
class DriftSpec:
    """Drift parameters; the defaults leave images unchanged."""

    brightness: float = 0.0
    contrast: float = 1.0
    noise: float = 0.0
    blur: float = 0.0

    def __post_init__(self) -> None:
        for name, (low, high, exclusive) in _RANGES.items():
            value = getattr(self, name)
            if not np.isfinite(value) or value > high or value < low or (exclusive and value == low):
                bound = f"({low:g}, {high:g}]" if exclusive else f"[{low:g}, {high:g}]"
                raise ConfigError(f"drift {name}={value:g} is out of range {bound}: {DRIFT_PARAMS[name]}.")

    @property
    def active(self) -> bool:
        return self != DriftSpec()

    def to_dict(self) -> dict[str, float]:
        return asdict(self)

    def __str__(self) -> str:
        changed = {k: v for k, v in self.to_dict().items() if v != getattr(DriftSpec(), k)}
        return ",".join(f"{k}={v:g}" for k, v in changed.items()) or "none"


def parse_drift(text: str | None) -> DriftSpec:
    """``"brightness=0.3,noise=0.05"`` -> :class:`DriftSpec`; empty or ``None`` means no drift."""
    if not text or not text.strip():
        return DriftSpec()
    values: dict[str, float] = {}
    for part in text.split(","):
        part = part.strip()
        if not part:
            continue
        name, sep, raw = part.partition("=")
        name = name.strip().lower()
        if not sep:
            raise ConfigError(f"drift item {part!r} needs the form name=value, e.g. brightness=0.3.")
        if name not in DRIFT_PARAMS:
            raise ConfigError(
                f"unknown drift parameter {name!r}; choose from {', '.join(DRIFT_PARAMS)}."
                + did_you_mean(name, DRIFT_PARAMS)
            )
        if name in values:
            raise ConfigError(f"drift parameter {name!r} is given twice in {text!r}.")
        try:
            values[name] = float(raw)
        except ValueError:
            raise ConfigError(f"drift {name}={raw.strip()!r} is not a number.") from None
    return DriftSpec(**values)


def apply_drift(pixels: np.ndarray, spec: DriftSpec, rng: np.random.Generator) -> np.ndarray:
    """``pixels`` (uint8 grey) with ``spec`` applied, as uint8; the input is returned as is when there is no drift.

    Order: blur -> contrast (around the image mean) -> brightness -> noise -> clip to [0, 255].
    """
    if not spec.active:
        return pixels
    if pixels.dtype != np.uint8:
        raise ValueError(f"apply_drift expects uint8 pixels, got {pixels.dtype}.")
    x = pixels.astype(np.float32) / 255.0
    if spec.blur > 0:
        x = gaussian_filter(x, sigma=spec.blur, mode="nearest")
    if spec.contrast != 1.0:
        mean = float(x.mean())
        x = (x - mean) * spec.contrast + mean
    if spec.brightness:
        x = x + spec.brightness
    if spec.noise > 0:
        x = x + rng.normal(0.0, spec.noise, x.shape).astype(np.float32)
    return np.clip(np.rint(x * 255.0), 0, 255).astype(np.uint8)
