"""ComfyUI's latent->RGB preview factors, for pictures of stored latents."""

from __future__ import annotations

import functools

from ..memv2v_core.bank.contact_sheet import LatentPreview


@functools.lru_cache(maxsize=1)
def latent_previews() -> dict[str, LatentPreview]:
    """Latent->RGB factors of every ComfyUI latent format that has them, keyed by lower-case class name (Bank Inspect's
    contact sheet and the bank browser's thumbnails)."""
    import comfy.latent_formats as formats

    previews = {}
    for name, kind in vars(formats).items():
        if isinstance(kind, type) and issubclass(kind, formats.LatentFormat) and kind is not formats.LatentFormat:
            try:
                fmt = kind()
            except Exception:  # noqa: BLE001 - a format that cannot be built without arguments has no preview here
                continue
            if getattr(fmt, "latent_rgb_factors", None) is None:
                continue
            mean, std = getattr(fmt, "latents_mean", None), getattr(fmt, "latents_std", None)
            previews[name.lower()] = LatentPreview.from_values(
                fmt.latent_rgb_factors, getattr(fmt, "latent_rgb_factors_bias", None),
                mean if std is not None else None, std if mean is not None else None,
                getattr(fmt, "scale_factor", 1.0) if mean is not None else 1.0)
    return previews
