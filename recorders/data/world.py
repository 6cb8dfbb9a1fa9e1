"""The built-in world: procedurally generated shapes in colours and visual domains, with template captions.

A scene is one coloured shape (6 colours × 6 shapes = 36 compositions, the classes) drawn at a random size,
position and rotation over a varying background, in one of five domains that change its look:

=========  ==================  =====================================================================
domain     caption phrase      look
=========  ==================  =====================================================================
photo      "photo"             filled shape, soft gradient background
sketch     "sketch"            hatched shape with a coloured contour on paper
outline    "line drawing"      thin coloured contour only, on a light background
noisy      "grainy photo"      a photo with pixel noise (σ 20 of 255)
night      "dark photo"        a photo darkened and tinted blue
=========  ==================  =====================================================================

Six compositions (:data:`HELD_OUT`, one per colour and per shape) never appear in pretraining, so zero-shot and
novel-class accuracy on them measure real compositional generalisation. The downstream few-shot task
(:func:`load_world`) is set in the ``sketch`` domain: the generic prompt "a photo of a {class}." names the wrong
domain, so learned context has something to learn (as EuroSAT does for real CLIP). The positive control
``world-mixed`` (``load_world(domains=MIXED_DOMAINS)``) mixes four domains, so the best prompt depends on the input.

Everything is deterministic: an image is a pure function of its key ``"world:<class>:<domain>:<index>"`` (the
random stream is seeded by the key's SHA-256), the same on every machine and in every process.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from recorders.data.types import DatasetSplits, Item
from recorders.format.errors import DataError

COLOURS: dict[str, tuple[int, int, int]] = {
    "blue": (40, 80, 220),
    "green": (40, 170, 60),
    "orange": (245, 130, 30),
    "purple": (140, 60, 190),
    "red": (215, 35, 35),
    "yellow": (235, 210, 40),
}
SHAPES: tuple[str, ...] = ("circle", "cross", "diamond", "square", "star", "triangle")
DOMAINS: dict[str, str] = {
    "photo": "photo",
    "sketch": "sketch",
    "outline": "line drawing",
    "noisy": "grainy photo",
    "night": "dark photo",
}
CLASSES: tuple[str, ...] = tuple(f"{colour} {shape}" for colour in COLOURS for shape in SHAPES)
HELD_OUT: tuple[str, ...] = (
    "blue star",
    "green triangle",
    "orange circle",
    "purple square",
    "red diamond",
    "yellow cross",
)
SEEN: tuple[str, ...] = tuple(c for c in CLASSES if c not in HELD_OUT)
TEMPLATES: tuple[str, ...] = (
    "a {domain} of a {cls}.",
    "a {domain} of the {cls}.",
    "a {cls} in a {domain}.",
)
DOWNSTREAM_DOMAIN = "sketch"
# The positive control (``world-mixed``): downstream images from several domains whose best prompts differ, so a
# prompt chosen per input ("a {domain} of a {class}.") beats any single prompt (see benchmarks/positive_control.py).
MIXED_DOMAINS: tuple[str, ...] = ("sketch", "outline", "noisy", "night")
IMAGE_SIZE = 64  # pixels, for load_world images; the pretraining renders at the model's own size
SPLIT_SIZES = {"train": 32, "val": 8, "test": 25}  # images per class in load_world
WORDS: tuple[str, ...] = tuple(
    sorted(
        {
            w
            for text in (*TEMPLATES, *DOMAINS.values(), *CLASSES)
            for w in text.replace("{", " ").replace("}", " ").replace(".", " ").split()
            if w not in ("domain", "cls")
        }
    )
)


@dataclass(frozen=True)
class Scene:
    """Everything that determines one image. Geometry is in units of the image side: ``radius`` in [0.36, 0.46],
    ``centre`` in [0.46, 0.54]², ``angle`` in [-10, 10] degrees (the shape fills the frame and moves little, so a
    tiny ViT on 24 px images learns shape fast); ``seed`` drives colour jitter, texture and noise."""

    colour: str
    shape: str
    domain: str
    radius: float
    centre: tuple[float, float]
    angle: float
    seed: int

    @property
    def classname(self) -> str:
        return f"{self.colour} {self.shape}"


def sample_scene(classname: str, domain: str, rng: np.random.Generator) -> Scene:
    """A random scene of composition ``classname`` ("<colour> <shape>") in ``domain``."""
    colour, shape = classname.split(" ")
    radius = float(rng.uniform(0.36, 0.46))
    centre = (float(rng.uniform(0.46, 0.54)), float(rng.uniform(0.46, 0.54)))
    return Scene(colour, shape, domain, radius, centre, float(rng.uniform(-10, 10)), int(rng.integers(2**31)))


def caption(scene: Scene, rng: np.random.Generator) -> str:
    """A random template caption naming the scene's domain and composition."""
    template = TEMPLATES[int(rng.integers(len(TEMPLATES)))]
    return template.format(domain=DOMAINS[scene.domain], cls=scene.classname)


def _outline(shape: str, centre: tuple[float, float], radius: float, angle: float, side: int) -> list[tuple]:
    """The shape's polygon in pixel coordinates of a ``side``-pixel canvas."""
    if shape == "circle":
        polar = [(1.0, t) for t in np.linspace(0, 2 * np.pi, 48, endpoint=False)]
    elif shape == "square":
        polar = [(1.0, np.pi / 4 + k * np.pi / 2) for k in range(4)]
    elif shape == "triangle":
        polar = [(1.1, -np.pi / 2 + k * 2 * np.pi / 3) for k in range(3)]
    elif shape == "star":
        polar = [(1.1 if k % 2 == 0 else 0.45, -np.pi / 2 + k * np.pi / 5) for k in range(10)]
    elif shape == "diamond":
        polar = [(1.1, -np.pi / 2), (0.55, 0.0), (1.1, np.pi / 2), (0.55, np.pi)]
    elif shape == "cross":
        arm, half = 1.0, 0.33
        corners = [
            (half, arm),
            (half, half),
            (arm, half),
            (arm, -half),
            (half, -half),
            (half, -arm),
            (-half, -arm),
            (-half, -half),
            (-arm, -half),
            (-arm, half),
            (-half, half),
            (-half, arm),
        ]
        polar = [(float(np.hypot(x, y)), float(np.arctan2(y, x))) for x, y in corners]
    else:
        raise ValueError(f"unknown shape {shape!r}")
    rot = np.deg2rad(angle)
    r_px, cx, cy = radius * side * 0.9, centre[0] * side, centre[1] * side
    return [(cx + r_px * r * np.cos(t + rot), cy + r_px * r * np.sin(t + rot)) for r, t in polar]


def render(scene: Scene, size: int) -> Image.Image:
    """The scene as a ``size``×``size`` RGB image (drawn at twice the size, then box-filtered down)."""
    rng = np.random.default_rng(scene.seed)
    side = 2 * size
    colour = np.clip(np.array(COLOURS[scene.colour]) + rng.normal(0, 12, 3), 0, 255)
    polygon = _outline(scene.shape, scene.centre, scene.radius, scene.angle, side)
    mask_image = Image.new("L", (side, side), 0)
    ImageDraw.Draw(mask_image).polygon(polygon, fill=255)
    mask = np.asarray(mask_image, dtype=np.float32)[..., None] / 255.0
    line_image = Image.new("L", (side, side), 0)
    ImageDraw.Draw(line_image).polygon(polygon, outline=255, width=max(2, side // 24))
    line = np.asarray(line_image, dtype=np.float32)[..., None] / 255.0

    if scene.domain in ("sketch", "outline"):
        paper = rng.uniform(225, 255) - rng.uniform(0, 12, 3)
        canvas: np.ndarray = np.broadcast_to(paper, (side, side, 3)).astype(np.float32)
        if scene.domain == "sketch":
            yy, xx = np.mgrid[0:side, 0:side]
            direction = 1 if rng.random() < 0.5 else -1
            hatch = (((xx + direction * yy + int(rng.integers(8))) // 3) % 3 == 0)[..., None]
            canvas = canvas * (1 - mask * hatch) + colour * mask * hatch
        canvas = canvas * (1 - line) + colour * line
    else:
        top, bottom = rng.uniform(90, 200, 3), rng.uniform(90, 200, 3)
        ramp = np.linspace(0, 1, side, dtype=np.float32)[:, None, None]
        canvas = (top * (1 - ramp) + bottom * ramp) * np.ones((1, side, 1), np.float32)
        canvas = canvas * (1 - mask) + colour * mask
        if scene.domain == "noisy":
            canvas = canvas + rng.normal(0, 20, canvas.shape)
        elif scene.domain == "night":
            canvas = canvas * 0.35 + np.array([0, 5, 30])
    image = Image.fromarray(np.clip(canvas, 0, 255).astype(np.uint8), "RGB")
    return image.resize((size, size), Image.Resampling.BOX)


def key_seed(key: str) -> int:
    """A 63-bit seed from a key's SHA-256: stable across processes and machines (unlike ``hash``)."""
    return int.from_bytes(hashlib.sha256(key.encode()).digest()[:8], "little") >> 1


def render_key(key: str, size: int = IMAGE_SIZE) -> Image.Image:
    """The image of a world key ``"world:<class>:<domain>:<index>"``."""
    parts = key.split(":")
    if len(parts) != 4 or parts[0] != "world" or parts[1] not in CLASSES or parts[2] not in DOMAINS:
        raise DataError(
            f"not a world image key: {key!r}: expected world:<class>:<domain>:<index> with a class "
            f"from recorders.data.world.CLASSES and a domain from {sorted(DOMAINS)}"
        )
    return render(sample_scene(parts[1], parts[2], np.random.default_rng(key_seed(key))), size)


def _world_name(domains: tuple[str, ...]) -> str:
    if domains == (DOWNSTREAM_DOMAIN,):
        return "world"
    return "world-mixed" if domains == MIXED_DOMAINS else "world-" + "+".join(domains)


def domain_of(key: str) -> str:
    """The domain of a world image key ``"world:<class>:<domain>:<index>"``."""
    return key.split(":")[2]


def load_world(root: Path | None = None, domains: tuple[str, ...] = (DOWNSTREAM_DOMAIN,)) -> DatasetSplits:
    """A downstream world dataset: all 36 compositions rendered in ``domains`` (default: the ``sketch`` domain).

    Per class: 32 train, 8 val and 25 test images at 64×64 px, each generated from its key (``root`` is unused:
    nothing is read from disk). Image ``index`` of a class is drawn in ``domains[index % len(domains)]``, so with
    several domains every split mixes them evenly (``world-mixed``: :data:`MIXED_DOMAINS`). Labels index the sorted
    class list, so the base half (first 18) and novel half each contain three held-out compositions.
    """
    unknown = [d for d in domains if d not in DOMAINS]
    if not domains or unknown:
        raise DataError(f"unknown world domain(s) {unknown}: choose from {sorted(DOMAINS)}")
    classnames = sorted(CLASSES)
    splits: dict[str, list[Item]] = {}
    start = 0
    for split, count in SPLIT_SIZES.items():
        splits[split] = [
            Item(f"world:{name}:{domains[index % len(domains)]}:{index}", label, name)
            for label, name in enumerate(classnames)
            for index in range(start, start + count)
        ]
        start += count
    single = len(domains) == 1
    identity = (classnames, domains[0] if single else domains, SPLIT_SIZES, IMAGE_SIZE, "world-v2")
    fingerprint = hashlib.sha256(repr(identity).encode()).hexdigest()[:16]
    return DatasetSplits(
        name=_world_name(domains),
        classnames=classnames,
        train=splits["train"],
        val=splits["val"],
        test=splits["test"],
        load_image=lambda item: render_key(item.key),
        fingerprint=fingerprint,
    )
