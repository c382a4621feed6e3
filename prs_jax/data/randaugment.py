"""RandAugment (Cubuk et al. 2020) per example on uint8 images, with timm's "rand-mM-nN" semantics.

Why our own: the maintained implementations do not fit a per-example, seeded host pipeline.
keras.layers.RandAugment works on tf batches and draws from its own seed generator; timm's and
torchvision's need torch and Python's global `random`. The image ops themselves are PIL's
(ImageOps, ImageEnhance, affine transforms); only the policy is written here, and every random
choice comes from the numpy Generator passed in, so grain's per-example generator makes it
deterministic.

Semantics (timm `rand_augment_transform`, default op list): draw `num_ops` ops uniformly with
replacement; apply each with probability 0.5; magnitude M in [0, 10] (optionally jittered by a
normal of std `magnitude_std`, clipped to [0, 10]) scales each op's range linearly; signed ops
(rotate, shear, translate; and the enhance ops of the "increasing" variant) take a random sign.
Geometric ops fill with `fill` (timm: the dataset mean colour) and resample bicubically: timm's
`create_transform` passes its `interpolation` to RandAugment's hparams unless it is 'random',
and DeiT's is 'bicubic' (without it timm would pick bilinear or bicubic at random per op).
"""

from __future__ import annotations

import numpy as np
from PIL import Image, ImageEnhance, ImageOps

MAX_MAGNITUDE = 10.0
OP_PROBABILITY = 0.5  # timm applies each chosen RandAugment op with this probability

# Ranges at magnitude 10 (timm's _LEVEL_DENOM = 10).
MAX_ROTATE_DEGREES = 30.0
MAX_SHEAR = 0.3
MAX_TRANSLATE_FRACTION = 0.45  # of the image side
MAX_SOLARIZE_ADD = 110
SOLARIZE_ADD_THRESHOLD = 128
RESAMPLE = Image.Resampling.BICUBIC  # DeiT's interpolation, for the geometric ops

Fill = tuple[int, int, int]


def _affine(image: Image.Image, coefficients, fill: Fill) -> Image.Image:
    # PIL maps each output pixel (x, y) to the input at (a x + b y + c, d x + e y + f).
    return image.transform(
        image.size, Image.Transform.AFFINE, coefficients, RESAMPLE, fillcolor=fill
    )


def _solarize_add(image: Image.Image, amount: int) -> Image.Image:
    lut = [min(255, v + amount) if v < SOLARIZE_ADD_THRESHOLD else v for v in range(256)]
    return image.point(lut * len(image.getbands()))


def _posterize(image: Image.Image, bits: int) -> Image.Image:
    if bits >= 8:
        return image
    if bits <= 0:  # no bit kept: black (timm, older Pillow); Pillow >= 13 rejects bits=0
        return Image.new(image.mode, image.size)
    return ImageOps.posterize(image, bits)


# name -> op(image, argument, fill). AutoContrast, Equalize and Invert ignore the argument.
_OPS = {
    "AutoContrast": lambda im, _, fill: ImageOps.autocontrast(im),
    "Equalize": lambda im, _, fill: ImageOps.equalize(im),
    "Invert": lambda im, _, fill: ImageOps.invert(im),
    "Rotate": lambda im, deg, fill: im.rotate(deg, RESAMPLE, fillcolor=fill),
    "Posterize": lambda im, bits, fill: _posterize(im, bits),
    "Solarize": lambda im, threshold, fill: ImageOps.solarize(im, threshold),
    "SolarizeAdd": lambda im, amount, fill: _solarize_add(im, amount),
    "Color": lambda im, factor, fill: ImageEnhance.Color(im).enhance(factor),
    "Contrast": lambda im, factor, fill: ImageEnhance.Contrast(im).enhance(factor),
    "Brightness": lambda im, factor, fill: ImageEnhance.Brightness(im).enhance(factor),
    "Sharpness": lambda im, factor, fill: ImageEnhance.Sharpness(im).enhance(factor),
    "ShearX": lambda im, s, fill: _affine(im, (1, s, 0, 0, 1, 0), fill),
    "ShearY": lambda im, s, fill: _affine(im, (1, 0, 0, s, 1, 0), fill),
    "TranslateX": lambda im, t, fill: _affine(im, (1, 0, t * im.size[0], 0, 1, 0), fill),
    "TranslateY": lambda im, t, fill: _affine(im, (1, 0, 0, 0, 1, t * im.size[1]), fill),
}
OP_NAMES = tuple(_OPS)
_GEOMETRIC_OPS = ("Rotate", "ShearX", "ShearY", "TranslateX", "TranslateY")
_ENHANCE_OPS = ("Color", "Contrast", "Brightness", "Sharpness")


def is_signed(name: str, increasing: bool = False) -> bool:
    """Whether op `name` takes a random sign (the enhance ops only in the increasing variant)."""
    return name in _GEOMETRIC_OPS or (increasing and name in _ENHANCE_OPS)


def op_argument(name: str, magnitude: float, increasing: bool = False, negate: bool = False):
    """The argument of op `name` at `magnitude` in [0, 10] (timm's level-to-arg table).

    `increasing` selects timm's "inc1" variants, in which a larger magnitude is always a
    stronger change and magnitude 0 leaves Solarize and the enhance ops as the identity.
    """
    m = magnitude / MAX_MAGNITUDE
    sign = -1.0 if negate and is_signed(name, increasing) else 1.0
    if name == "Rotate":
        return sign * MAX_ROTATE_DEGREES * m
    if name in ("ShearX", "ShearY"):
        return sign * MAX_SHEAR * m
    if name in ("TranslateX", "TranslateY"):  # a fraction of the image side
        return sign * MAX_TRANSLATE_FRACTION * m
    if name == "Posterize":  # bits kept: 0..4 (0 = black), or 4..0 increasing
        return 4 - int(4 * m) if increasing else int(4 * m)
    if name == "Solarize":  # pixels >= threshold are inverted
        return 256 - int(256 * m) if increasing else int(256 * m)
    if name == "SolarizeAdd":
        return int(MAX_SOLARIZE_ADD * m)
    if name in _ENHANCE_OPS:  # factor 1 is the identity
        return 1.0 + sign * 0.9 * m if increasing else 0.1 + 1.8 * m
    return None


def apply_op(
    image: np.ndarray,
    name: str,
    magnitude: float,
    *,
    fill: Fill = (128, 128, 128),
    increasing: bool = False,
    negate: bool = False,
) -> np.ndarray:
    """One RandAugment op on uint8[H, W, 3] at `magnitude` in [0, 10]; returns uint8[H, W, 3]."""
    arg = op_argument(name, magnitude, increasing, negate)
    return np.asarray(_OPS[name](Image.fromarray(image), arg, tuple(fill)), dtype=np.uint8)


def rand_augment(
    image: np.ndarray,
    rng: np.random.Generator,
    *,
    num_ops: int = 2,
    magnitude: float = 9.0,
    magnitude_std: float = 0.0,
    increasing: bool = False,
    fill: Fill = (128, 128, 128),
) -> np.ndarray:
    """RandAugment on uint8[H, W, 3] with every random choice drawn from `rng`."""
    if num_ops <= 0:
        return image
    pil = Image.fromarray(image)
    fill = tuple(fill)
    for op_index in rng.integers(len(OP_NAMES), size=num_ops):
        name = OP_NAMES[op_index]
        # Draw the same numbers whether or not the op is applied, so that one decision does not
        # shift the stream of the next.
        apply, negate_draw, jitter = rng.random(), rng.random(), rng.standard_normal()
        if apply >= OP_PROBABILITY:
            continue
        m = magnitude
        if magnitude_std > 0:
            m = float(np.clip(m + magnitude_std * jitter, 0.0, MAX_MAGNITUDE))
        negate = is_signed(name, increasing) and negate_draw < 0.5
        pil = _OPS[name](pil, op_argument(name, m, increasing, negate), fill)
    return np.asarray(pil, dtype=np.uint8)
