"""The built-in dataset (builtin-v2): four small domains in the UnED layout, made from real pixels
that ship with pip-installed packages (scikit-image, matplotlib), deterministic from a seed
(5,963 JPEGs, about 6 s of CPU; the domains are made in parallel processes).

Like UnED it mixes instance-level, fine-grained and category domains, and two of the four
evaluate on classes UNSEEN in training (disjoint train / val / test classes, as UnED's
metric-learning domains cars, sop and inshop do), so a model must learn what makes two images
the same instance rather than memorise the training classes.  Every evaluation class has at
least two images in its kNN set, so no query lacks a positive.

- landmarks (instance-level, 205 classes, seen at test, 96x120 px): each class is one square of a
  56 px grid laid over one of scikit-image's colour photos (astronaut, coffee, chelsea, rocket,
  motorcycle, hubble deep field, retina, immunohistochemistry) or matplotlib's grace_hopper photo,
  keeping the squares that show detail; the squares do not overlap, so no two classes share
  content.  Its images are views with shift, zoom, rotation, perspective tilt, lighting and blur,
  like photos of one landmark; 3-12 train images per class (long tail).  "index" (test: one query
  per class against two index views of every class) and "small_index" (val: two thirds of the
  classes against their own two views each plus 30 distractor classes) splits, like met and gldv2.
- glyphs (fine-grained, UNSEEN classes, 64 px): each class is one character (Latin, IPA, Greek,
  Cyrillic, arrows, maths, box drawing, shapes, dingbats; look-alikes removed); its images are
  the character in different fonts (16 DejaVu and STIX faces: sans, serif, mono; regular, bold,
  italic), sizes, positions, rotations and ink/paper colours.  Train, val and test characters
  are disjoint: the model must learn what stays the same across typefaces.
- faces (identity, UNSEEN classes, 64 px): scikit-image's 100 LFW face crops (25x25 gray), one
  identity each; views with shift, zoom, rotation, perspective tilt, lighting and blur.  60 train
  identities (10 views each), 15 val and 25 test identities (6 views each).
- textures (category-level, 24 classes, seen at test, 80 px): scikit-image's grayscale images
  (brick, grass, gravel, moon, coins, page, camera, cell) at three zoom levels; a view is a
  random rotated patch anywhere in the image.  20 train, 6 val and 8 test views per class.

Domains without an index split use query-is-index (leave-one-out).
"""

import json
import os
import shutil
from collections.abc import Mapping
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..extras import needs_extra

with needs_extra("train"):
    from PIL import Image, ImageDraw, ImageFilter, ImageFont

from ..files.outputs import writing

VERSION = "builtin-v2"
MARKER = ".complete"
_FONTS = [
    "DejaVuSans.ttf",
    "DejaVuSans-Bold.ttf",
    "DejaVuSans-Oblique.ttf",
    "DejaVuSans-BoldOblique.ttf",
    "DejaVuSerif.ttf",
    "DejaVuSerif-Bold.ttf",
    "DejaVuSerif-Italic.ttf",
    "DejaVuSerif-BoldItalic.ttf",
    "DejaVuSansMono.ttf",
    "DejaVuSansMono-Bold.ttf",
    "DejaVuSansMono-Oblique.ttf",
    "DejaVuSansMono-BoldOblique.ttf",
    "STIXGeneral.ttf",
    "STIXGeneralBol.ttf",
    "STIXGeneralItalic.ttf",
    "STIXGeneralBolIta.ttf",
]
_GLYPH_RANGES = [
    (0x21, 0x7F),
    (0xA1, 0x250),
    (0x250, 0x2B0),
    (0x370, 0x530),
    (0x1E00, 0x2000),
    (0x2190, 0x2300),
    (0x2500, 0x2600),
    (0x2700, 0x27C0),
    (0x2800, 0x2900),
    (0x2A00, 0x2B00),
]


def skimage_data_dir() -> Path:
    """scikit-image's folder of sample images (real photos, textures, LFW crops)."""
    with needs_extra("train"):
        import skimage  # imported on use: generating images is rare, importing udon_fast.data is not

    return Path(skimage.__file__).parent / "data"


def _font_dir() -> Path:
    with needs_extra("train"):
        import matplotlib

    return Path(matplotlib.get_data_path()) / "fonts" / "ttf"


@dataclass
class _Writer:
    """Writes JPEGs under images/<domain>/ and collects info-file entries per split."""

    root: Path
    domain: str

    def __post_init__(self):
        self.entries: dict[str, list[dict]] = {}
        self.folders: set[Path] = set()

    def add(self, split: str, class_id: int, image: Image.Image) -> None:
        entries = self.entries.setdefault(split, [])
        rel = f"{self.domain}/{class_id}/{split}_{len(entries)}.jpg"
        path = self.root / "images" / rel
        if path.parent not in self.folders:
            path.parent.mkdir(parents=True, exist_ok=True)
            self.folders.add(path.parent)
        image.convert("RGB").save(path, "JPEG", quality=90)
        entries.append({"path": rel, "class_id": class_id})

    def finish(self) -> dict[str, int]:
        info = self.root / "info_files" / self.domain
        info.mkdir(parents=True, exist_ok=True)
        for split, entries in self.entries.items():
            (info / f"{split}.json").write_text(json.dumps(entries), encoding="utf-8")
        return {split: len(entries) for split, entries in self.entries.items()}


def _view(
    source: Image.Image,
    center,
    region: float,
    out: tuple[int, int],
    angle: float,
    tilt: tuple[float, float] = (0.0, 0.0),
) -> Image.Image:
    """An (h, w) = `out` view of `source` centred at `center`, `region` source px wide, rotated by `angle` rad.

    `tilt` = (tx, ty) turns it into a perspective view, as from a camera turned sideways / up: the
    scale changes by a factor 1 + tx across the width (1 + ty across the height)."""
    h, w = out
    s = region / w
    a, b, d, e = s * np.cos(angle), -s * np.sin(angle), s * np.sin(angle), s * np.cos(angle)
    if tilt == (0.0, 0.0):
        c = center[0] - a * w / 2 - b * h / 2
        f = center[1] - d * w / 2 - e * h / 2
        return source.transform((w, h), Image.Transform.AFFINE, (a, b, c, d, e, f), resample=Image.Resampling.BILINEAR)
    # source = A (x - w/2, y - h/2) / q + center with q = 1 + g (x - w/2) + k (y - h/2), as a projective map
    g, k = tilt[0] / w, tilt[1] / h
    q0 = 1 - g * w / 2 - k * h / 2
    cx, cy = center
    coefficients = (
        a + cx * g,
        b + cx * k,
        cx * q0 - a * w / 2 - b * h / 2,
        d + cy * g,
        e + cy * k,
        cy * q0 - d * w / 2 - e * h / 2,
        g,
        k,
    )
    return source.transform(
        (w, h), Image.Transform.PERSPECTIVE, tuple(v / q0 for v in coefficients), resample=Image.Resampling.BILINEAR
    )


def _light(image: Image.Image, rng: np.random.Generator, colour: float = 0.08) -> Image.Image:
    """Random contrast, brightness and per-channel gain."""
    x = np.asarray(image.convert("RGB"), dtype=np.float32)
    gain = rng.uniform(0.7, 1.3) * (1 + rng.uniform(-colour, colour, 3))
    x = (x - x.mean()) * gain + x.mean() + rng.uniform(-25, 25)
    return Image.fromarray(np.clip(x, 0, 255).astype(np.uint8))


def _sample_data(name: str) -> Path:
    """A file of matplotlib's sample_data folder."""
    with needs_extra("train"):
        import matplotlib

    return Path(matplotlib.get_data_path()) / "sample_data" / name


def _resized(image: Image.Image, short_side: int | None) -> Image.Image:
    if short_side:
        scale = short_side / min(image.size)
        image = image.resize((round(image.width * scale), round(image.height * scale)), Image.Resampling.LANCZOS)
    return image


def _load_matplotlib(name: str, short_side: int | None = None) -> Image.Image:
    return _resized(Image.open(_sample_data(name)).convert("RGB"), short_side)


def _load(name: str, short_side: int | None = None) -> Image.Image:
    return _resized(Image.open(skimage_data_dir() / name).convert("RGB"), short_side)


def _class_ids(rng: np.random.Generator, n: int) -> list[int]:
    """n distinct, non-contiguous original class ids (exercise the remapping)."""
    return sorted(rng.choice(1_000_000, size=n, replace=False).tolist())


def _blur(image: Image.Image, rng: np.random.Generator, p: float = 0.3) -> Image.Image:
    return image.filter(ImageFilter.GaussianBlur(rng.uniform(0.5, 1.5))) if rng.random() < p else image


def _landmark_places(photos: list[Image.Image], cell: int) -> list[tuple[Image.Image, tuple[float, float]]]:
    """Centres of the `cell` px squares of a grid over each photo that show detail (not flat sky or background);
    the squares do not overlap, so no two classes share content."""
    places = []
    for photo in photos:
        nx, ny = (photo.width - 8) // cell, (photo.height - 8) // cell
        ox, oy = (photo.width - nx * cell) / 2, (photo.height - ny * cell) / 2
        for i in range(nx):
            for j in range(ny):
                center = (ox + (i + 0.5) * cell, oy + (j + 0.5) * cell)
                if np.asarray(_view(photo, center, cell, (24, 24), 0.0).convert("L"), dtype=np.float32).std() > 20:
                    places.append((photo, center))
    return places


def _landmarks(root: Path, rng: np.random.Generator) -> dict[str, int]:
    photos = [
        _load(n, 320)
        for n in (
            "astronaut.png",
            "coffee.png",
            "chelsea.png",
            "rocket.jpg",
            "motorcycle_left.png",
            "hubble_deep_field.jpg",
            "retina.jpg",
            "ihc.png",
        )
    ]
    photos.append(_load_matplotlib("grace_hopper.jpg", 320))
    cell = 56
    places = _landmark_places(photos, cell)
    ids = _class_ids(rng, len(places))

    def view(k):
        photo, (cx, cy) = places[k]
        jitter = rng.normal(0, 0.1 * cell, 2)
        image = _view(
            photo,
            (cx + jitter[0], cy + jitter[1]),
            cell * np.exp(rng.uniform(-0.3, 0.3)),
            (96, 120),
            rng.normal(0, 0.25),
            tuple(rng.normal(0, 0.35, 2)),
        )
        return _blur(_light(image, rng, colour=0.1), rng)

    w = _Writer(root, "landmarks")
    order = rng.permutation(len(ids))
    n_val = 2 * len(ids) // 3
    val_classes, extra = order[:n_val], order[n_val : n_val + 30]
    for k in range(len(ids)):
        for _ in range(3 + int(10 * rng.random() ** 2)):
            w.add("train", ids[k], view(k))
        for _ in range(2):
            w.add("index", ids[k], view(k))
    for k in val_classes:
        w.add("val", ids[k], view(k))
    for k in np.concatenate([val_classes, extra]):
        for _ in range(2):
            w.add("small_index", ids[k], view(k))
    for k in range(len(ids)):
        w.add("test", ids[k], view(k))
    return w.finish()


def _glyph_classes(rng: np.random.Generator, n: int) -> list[str]:
    """`n` characters present in every font, none drawn identically to another in DejaVu Sans."""
    with needs_extra("train"):
        from matplotlib.ft2font import FT2Font

    faces = [FT2Font(str(_font_dir() / f)) for f in _FONTS]
    font = ImageFont.truetype(str(_font_dir() / _FONTS[0]), 32)
    seen, chars = set(), []
    for lo, hi in _GLYPH_RANGES:
        for cp in range(lo, hi):
            if not all(face.get_char_index(cp) for face in faces):
                continue
            mask = font.getmask(chr(cp))
            key = (mask.size, bytes(mask))
            if mask.getbbox() is None or key in seen:
                continue
            seen.add(key)
            chars.append(chr(cp))
    pick = rng.choice(len(chars), size=min(n, len(chars)), replace=False)
    return [chars[i] for i in sorted(pick)]


def _glyphs(root: Path, rng: np.random.Generator) -> dict[str, int]:
    counts = {"train": (300, 4), "val": (100, 3), "test": (150, 3)}  # split: (characters, images each)
    chars = _glyph_classes(rng, sum(n for n, _ in counts.values()))
    ids = _class_ids(rng, len(chars))
    fonts: dict[tuple[str, int], ImageFont.FreeTypeFont] = {}
    font_dir = _font_dir()

    def view(k, name):
        size = int(rng.integers(15, 23)) * 2
        if (name, size) not in fonts:
            fonts[name, size] = ImageFont.truetype(str(font_dir / name), size)
        mask = Image.new("L", (64, 64), 0)
        ImageDraw.Draw(mask).text(
            (32 + rng.normal(0, 3), 32 + rng.normal(0, 3)), chars[k], fill=255, font=fonts[name, size], anchor="mm"
        )
        mask = mask.rotate(rng.normal(0, 8), resample=Image.Resampling.BICUBIC)
        paper = rng.uniform(150, 255, 3)
        ink = paper * rng.uniform(0, 0.45) + rng.uniform(-30, 30, 3)
        alpha = np.asarray(mask, dtype=np.float32)[..., None] / 255
        x = paper * (1 - alpha) + ink * alpha + rng.normal(0, 6, (64, 64, 1))
        return Image.fromarray(np.clip(x, 0, 255).astype(np.uint8))

    w = _Writer(root, "glyphs")
    order = iter(rng.permutation(len(chars)))
    for split, (classes, images) in counts.items():
        for _ in range(classes):
            k = next(order)
            for name in rng.choice(_FONTS, size=images, replace=False):  # each image in another typeface
                w.add(split, ids[k], view(k, str(name)))
    return w.finish()


def _faces(root: Path, rng: np.random.Generator) -> dict[str, int]:
    faces = np.load(skimage_data_dir() / "lfw_subset.npy")[:100]
    sources = [Image.fromarray((f * 255).astype(np.uint8)).convert("RGB") for f in faces]
    ids = _class_ids(rng, len(sources))

    def view(k):
        center = 12.5 + rng.normal(0, 1.2, 2)
        image = _view(
            sources[k],
            center,
            22 * np.exp(rng.uniform(-0.15, 0.15)),
            (64, 64),
            rng.normal(0, 0.15),
            tuple(rng.normal(0, 0.3, 2)),
        )
        return _light(_blur(image, rng, 0.5), rng, colour=0.0)

    w = _Writer(root, "faces")
    order = iter(rng.permutation(len(sources)))
    for split, classes, images in (("train", 60, 10), ("val", 15, 6), ("test", 25, 6)):
        for _ in range(classes):
            k = next(order)
            for _ in range(images):
                w.add(split, ids[k], view(k))
    return w.finish()


def _textures(root: Path, rng: np.random.Generator) -> dict[str, int]:
    sources = [
        _load(n)
        for n in ("brick.png", "grass.png", "gravel.png", "moon.png", "coins.png", "page.png", "camera.png", "cell.png")
    ]
    classes = [(s, zoom * min(s.size)) for s in sources for zoom in (0.1, 0.25, 0.5)]
    ids = _class_ids(rng, len(classes))

    def view(k):
        source, zoom = classes[k]
        region = zoom * rng.uniform(0.85, 1.15)
        margin = 0.75 * region
        center = (rng.uniform(margin, source.width - margin), rng.uniform(margin, source.height - margin))
        return _light(_view(source, center, region, (80, 80), rng.uniform(0, 2 * np.pi)), rng, colour=0.0)

    w = _Writer(root, "textures")
    for k in range(len(classes)):
        for split, count in (("train", 20), ("val", 6), ("test", 8)):
            for _ in range(count):
                w.add(split, ids[k], view(k))
    return w.finish()


_DOMAINS = {"landmarks": _landmarks, "glyphs": _glyphs, "faces": _faces, "textures": _textures}
# Domains whose val and test classes are disjoint from the train classes (and from each other).
UNSEEN_CLASS_DOMAINS = ("glyphs", "faces")


def write_builtin(out: str | os.PathLike, seed: int = 0) -> dict[str, dict[str, int]]:
    """Write the built-in dataset into `out` (created; must not hold files); returns {domain: {split: images}}.

    A write that fails (a full disk, a read-only folder) raises `OutputError` naming `out` and the cause,
    after removing everything written (and `out` itself if it was created here), so a rerun starts clean.
    """
    out = Path(out)
    if out.exists() and any(out.iterdir()):
        raise FileExistsError(f"{out} is not empty; choose a new folder for the built-in dataset")
    created = not out.exists()
    try:
        with writing(out, "the built-in dataset to"):
            out.mkdir(parents=True, exist_ok=True)
            with ProcessPoolExecutor(max_workers=min(len(_DOMAINS), os.cpu_count() or 1)) as pool:
                jobs = {
                    name: pool.submit(make, out, np.random.default_rng([seed, i]))
                    for i, (name, make) in enumerate(_DOMAINS.items())
                }
                return {name: job.result() for name, job in jobs.items()}  # the pool waits for every job
    except BaseException:
        if out.is_dir():
            for child in out.iterdir():
                if child.is_dir():
                    shutil.rmtree(child, ignore_errors=True)
                else:
                    child.unlink(missing_ok=True)
            if created:
                out.rmdir()
        raise


def default_data_root(
    data_root: str | os.PathLike | None, folders: Mapping[str, str] | None
) -> str | os.PathLike | None:
    """The UnED root a command reads: `data_root` when given; else the built-in dataset (generated on
    first use), unless folder domains are given (then None: those folders alone)."""
    return data_root or (None if folders else ensure_builtin())


def default_cache_dir() -> Path:
    """$XDG_CACHE_HOME/udon_fast (default ~/.cache/udon_fast)."""
    return Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "udon_fast"


def ensure_builtin(cache_dir: str | os.PathLike | None = None, seed: int = 0) -> Path:
    """The built-in dataset's root (UnED layout), generated on first use.

    Lives in `<cache_dir or default_cache_dir()>/<VERSION>[-seed<N>]`; it counts as present only
    with its completion marker, and is generated in a temporary folder that is renamed into place,
    so an interrupted or concurrent generation never leaves a half-written dataset in use.
    """
    cache = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    final = cache / (VERSION if seed == 0 else f"{VERSION}-seed{seed}")
    if (final / MARKER).is_file():
        return final
    cache.mkdir(parents=True, exist_ok=True)
    tmp = cache / f".{final.name}.tmp-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    summary = write_builtin(tmp, seed)
    (tmp / MARKER).write_text(json.dumps({"version": VERSION, "seed": seed, "images": summary}), encoding="utf-8")
    if final.exists() and not (final / MARKER).is_file():  # no marker: not a finished dataset
        shutil.rmtree(final, ignore_errors=True)
    try:
        os.rename(tmp, final)
    except OSError:
        if not (final / MARKER).is_file():
            raise
        shutil.rmtree(tmp, ignore_errors=True)
    return final
