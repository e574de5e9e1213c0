"""The toy world's scenes: one or two coloured shapes on a grey canvas, sampled deterministically from
(seed, index) and rendered with PIL.

Why a synthetic world: no weights or datasets can be downloaded here, and the paper's question
(does captioning emerge in a language that only has translation data?) needs captions whose exact
translations are known and whose content can be read back (transforms/toy_grammar.py), on images a
model trained from scratch in minutes can ground. Scenes are compositional (shape x colour x size x
position, or two objects and their relation): 96 objects, 480 one-object and 36,480 two-object
scene descriptions, and every image is distinct (positions are jittered within their region).
"""
from __future__ import annotations

import dataclasses
import hashlib
import io
import math
import random
from typing import Iterator, Optional

from PIL import Image, ImageDraw

SHAPES = ("circle", "square", "triangle", "star", "diamond", "cross")
COLOURS = {"red": (220, 40, 40), "green": (40, 170, 60), "blue": (40, 80, 220), "yellow": (240, 210, 40),
           "white": (250, 250, 250), "black": (15, 15, 15), "purple": (140, 60, 190), "orange": (245, 140, 30)}
SIZES = {"small": 0.09, "large": 0.18}  # the shape's radius as a share of the image side
POSITIONS = {"left": (0.25, 0.5), "right": (0.75, 0.5), "top": (0.5, 0.25), "bottom": (0.5, 0.75),
             "center": (0.5, 0.5)}  # where a lone object sits (centre of its region)
RELATIONS = ("left_of", "right_of", "above", "below")  # the first object relative to the second
BACKGROUND = (128, 128, 128)


@dataclasses.dataclass(frozen=True)
class Thing:
    shape: str
    colour: str
    size: str


@dataclasses.dataclass(frozen=True)
class Scene:
    """One object at a position, or two objects where `relation` says how the first lies to the second."""
    first: Thing
    position: Optional[str] = None
    second: Optional[Thing] = None
    relation: Optional[str] = None

    def attributes(self) -> dict:
        """What a caption must say, as plain values (kept in the sample JSON; read back by the eval)."""
        out = {"first": dataclasses.asdict(self.first)}
        if self.second is None:
            out["position"] = self.position
        else:
            out["second"] = dataclasses.asdict(self.second)
            out["relation"] = self.relation
        return out


def scene_key(seed: int, index: int) -> str:
    """The sample key of scene `index` of world `seed`: the scene (and so its caption in any toy
    language, and its attributes) can be recomputed from the key alone (`scene_of_key`)."""
    return f"toy{seed}-{index:09d}"


def scene_of_key(key: str) -> Scene:
    seed, _, index = key.removeprefix("toy").partition("-")
    if not (seed.isdigit() and index.isdigit()):
        raise ValueError(f"{key!r} is not a toy scene key (toy<seed>-<index>)")
    return sample_scene(int(seed), int(index))


def every_scene() -> Iterator[Scene]:
    """Every scene the world can describe, one per distinct caption (positions are not jittered here)."""
    things = [Thing(shape, colour, size) for shape in SHAPES for colour in COLOURS for size in SIZES]
    for first in things:
        yield from (Scene(first, position=position) for position in POSITIONS)
        for second in things:
            if second != first:
                yield from (Scene(first, second=second, relation=relation) for relation in RELATIONS)


def _rng(seed: int, index: int, purpose: str) -> random.Random:
    """A generator of its own per (seed, scene, purpose): scene i is the same whatever else is drawn."""
    digest = hashlib.sha256(f"{seed}:{index}:{purpose}".encode()).digest()
    return random.Random(int.from_bytes(digest[:8], "big"))


def _thing(rng: random.Random) -> Thing:
    return Thing(rng.choice(SHAPES), rng.choice(sorted(COLOURS)), rng.choice(sorted(SIZES)))


def sample_scene(seed: int, index: int, two_object_share: float = 0.75) -> Scene:
    """Scene `index` of the world `seed`; two different objects in `two_object_share` of them."""
    rng = _rng(seed, index, "scene")
    first = _thing(rng)
    if rng.random() >= two_object_share:
        return Scene(first, position=rng.choice(sorted(POSITIONS)))
    second = _thing(rng)
    while second == first:
        second = _thing(rng)
    return Scene(first, second=second, relation=rng.choice(RELATIONS))


def _centres(scene: Scene, rng: random.Random) -> list[tuple[float, float]]:
    """Object centres in [0, 1]^2, jittered, with the relation clear (a margin between the two)."""
    if scene.second is None:
        x, y = POSITIONS[scene.position]
        return [(x + rng.uniform(-0.06, 0.06), y + rng.uniform(-0.06, 0.06))]
    near, far, across = rng.uniform(0.22, 0.28), rng.uniform(0.72, 0.78), rng.uniform(0.3, 0.7)
    first, second = {"left_of": ((near, across), (far, across)), "right_of": ((far, across), (near, across)),
                     "above": ((across, near), (across, far)), "below": ((across, far), (across, near))}[scene.relation]
    return [first, second]


def _polygon(shape: str, cx: float, cy: float, r: float) -> list[tuple[float, float]]:
    def ring(n: int, radii: tuple[float, ...], turn: float) -> list[tuple[float, float]]:
        return [(cx + radii[i % len(radii)] * math.cos(turn + 2 * math.pi * i / n),
                 cy + radii[i % len(radii)] * math.sin(turn + 2 * math.pi * i / n)) for i in range(n)]

    if shape == "square":
        return ring(4, (r * 1.15,), math.pi / 4)
    if shape == "triangle":
        return ring(3, (r * 1.2,), -math.pi / 2)
    if shape == "star":
        return ring(10, (r * 1.2, r * 0.5), -math.pi / 2)
    if shape == "diamond":
        return ring(4, (r * 1.2, r * 0.75), -math.pi / 2)
    if shape == "cross":
        a, b = r, r * 0.36
        return [(cx - b, cy - a), (cx + b, cy - a), (cx + b, cy - b), (cx + a, cy - b), (cx + a, cy + b), (cx + b, cy + b),
                (cx + b, cy + a), (cx - b, cy + a), (cx - b, cy + b), (cx - a, cy + b), (cx - a, cy - b), (cx - b, cy - b)]
    raise ValueError(f"no polygon for shape {shape!r}")


def render(scene: Scene, seed: int, index: int, size: int = 64) -> bytes:
    """The scene as PNG bytes, `size` pixels square (drawn at 4x and downsampled: smooth edges)."""
    scale = 4 * size
    image = Image.new("RGB", (scale, scale), BACKGROUND)
    draw = ImageDraw.Draw(image)
    things = [scene.first] if scene.second is None else [scene.first, scene.second]
    for thing, (x, y) in zip(things, _centres(scene, _rng(seed, index, "layout"))):
        cx, cy, r = x * scale, y * scale, SIZES[thing.size] * scale
        colour = COLOURS[thing.colour]
        if thing.shape == "circle":
            draw.ellipse((cx - r, cy - r, cx + r, cy + r), fill=colour)
        else:
            draw.polygon(_polygon(thing.shape, cx, cy, r), fill=colour)
    out = io.BytesIO()
    image.resize((size, size), Image.LANCZOS).save(out, format="PNG", optimize=True)
    return out.getvalue()
