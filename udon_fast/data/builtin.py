"""The built-in dataset: four small domains in the UnED layout, made from real pixels that ship
with pip-installed packages, deterministic from a seed (about 5,400 JPEGs, 28 MB on disk; the
domains are made in parallel processes, ~10 s of CPU).

- landmarks (instance-level, 200 classes, mildly long-tailed, 96x120 px): each class is a region
  of one of scikit-image's colour photos (astronaut, coffee, chelsea, rocket, the motorcycle
  pair, hubble deep field, retina, immunohistochemistry); its images are random views (shift,
  zoom, rotation, lighting), like photos of one landmark or product.  Has "index" (test vs index)
  and "small_index" (val vs small_index) splits, like met.
- glyphs (fine-grained, 1,500 classes, power-law tail, 64 px): each class is one character
  (Latin, IPA, Greek, Cyrillic, arrows, maths, box drawing, shapes, dingbats, Braille;
  look-alikes removed) drawn with matplotlib's DejaVu fonts (sans, serif, mono; regular, bold,
  oblique) at random size, position, rotation and ink/paper colours.  The k-th class in a
  random order has max(1, round(16 / sqrt(k))) train images (like met, about 9 in 10 classes
  have a single one): the slowest to learn.
- textures (24 classes, 32 train images each, 80 px): scikit-image's grayscale images (brick,
  grass, gravel, moon, coins, page, camera, cell) at three zoom levels (patches of 0.1, 0.25 and
  0.5 of the short side); a view is a random rotated patch anywhere in the image: the fastest
  to learn.
- faces (100 classes, 5 train images each, 64 px): scikit-image's LFW face crops (25x25 gray);
  views with shift, zoom, rotation, lighting and blur.
val/test are new views of train classes; domains without an index split use query-is-index.
"""
import json
import os
import shutil
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFilter, ImageFont

VERSION = "builtin-v1"
MARKER = ".complete"
_FONTS = ["DejaVuSans.ttf", "DejaVuSans-Bold.ttf", "DejaVuSans-Oblique.ttf", "DejaVuSerif.ttf",
          "DejaVuSerif-Bold.ttf", "DejaVuSerif-Italic.ttf", "DejaVuSansMono.ttf", "DejaVuSansMono-Bold.ttf"]
_GLYPH_RANGES = [(0x21, 0x7F), (0xA1, 0x250), (0x250, 0x2B0), (0x370, 0x530), (0x1E00, 0x2000),
                 (0x2190, 0x2300), (0x2500, 0x2600), (0x2700, 0x27C0), (0x2800, 0x2900), (0x2A00, 0x2B00)]


def _skimage_data() -> Path:
    import skimage  # imported on use: generating the dataset is rare, importing udon_fast.data is not

    return Path(skimage.__file__).parent / "data"


def _font_dir() -> Path:
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


def _view(source: Image.Image, center, region: float, out: tuple[int, int], angle: float) -> Image.Image:
    """An (h, w) = `out` view of `source` centred at `center`, `region` source px wide, rotated by `angle` rad."""
    h, w = out
    s = region / w
    a, b, d, e = s * np.cos(angle), -s * np.sin(angle), s * np.sin(angle), s * np.cos(angle)
    c = center[0] - a * w / 2 - b * h / 2
    f = center[1] - d * w / 2 - e * h / 2
    return source.transform((w, h), Image.Transform.AFFINE, (a, b, c, d, e, f), resample=Image.Resampling.BILINEAR)


def _light(image: Image.Image, rng: np.random.Generator, colour: float = 0.08) -> Image.Image:
    """Random contrast, brightness and per-channel gain."""
    x = np.asarray(image.convert("RGB"), dtype=np.float32)
    gain = rng.uniform(0.7, 1.3) * (1 + rng.uniform(-colour, colour, 3))
    x = (x - x.mean()) * gain + x.mean() + rng.uniform(-25, 25)
    return Image.fromarray(np.clip(x, 0, 255).astype(np.uint8))


def _load(name: str, short_side: int | None = None) -> Image.Image:
    image = Image.open(_skimage_data() / name).convert("RGB")
    if short_side:
        scale = short_side / min(image.size)
        image = image.resize((round(image.width * scale), round(image.height * scale)), Image.Resampling.LANCZOS)
    return image


def _class_ids(rng: np.random.Generator, n: int) -> list[int]:
    """n distinct, non-contiguous original class ids (exercise the remapping)."""
    return sorted(rng.choice(1_000_000, size=n, replace=False).tolist())


def _landmarks(root: Path, rng: np.random.Generator) -> dict[str, int]:
    photos = [_load(n, 256) for n in ("astronaut.png", "coffee.png", "chelsea.png", "rocket.jpg",
                                       "motorcycle_left.png", "motorcycle_right.png", "hubble_deep_field.jpg",
                                       "retina.jpg", "ihc.png")]
    ids = _class_ids(rng, 200)
    classes = []
    for k in range(len(ids)):
        photo = photos[k % len(photos)]
        region = rng.uniform(48, 110)
        margin = 0.7 * region
        center = (rng.uniform(margin, photo.width - margin), rng.uniform(margin, photo.height - margin))
        classes.append((photo, center, region))

    def view(k):
        photo, (cx, cy), region = classes[k]
        jitter = rng.normal(0, 0.08 * region, 2)
        image = _view(photo, (cx + jitter[0], cy + jitter[1]), region * rng.uniform(0.85, 1.15), (96, 120),
                      rng.normal(0, 0.12))
        return _light(image, rng)

    w = _Writer(root, "landmarks")
    order = rng.permutation(len(ids))
    val_classes, test_classes, extra = order[:60], order[60:160], order[160:190]
    for k in range(len(ids)):
        for _ in range(2 + int(6 * rng.random() ** 2)):
            w.add("train", ids[k], view(k))
        for _ in range(2):
            w.add("index", ids[k], view(k))
    for k in val_classes:
        w.add("val", ids[k], view(k))
    for k in np.concatenate([val_classes, extra]):
        for _ in range(2):
            w.add("small_index", ids[k], view(k))
    for k in test_classes:
        w.add("test", ids[k], view(k))
    return w.finish()


def _glyph_classes(rng: np.random.Generator, n: int) -> list[str]:
    """`n` characters present in every font, none drawn identically to another in DejaVu Sans."""
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
    chars = _glyph_classes(rng, 1500)
    ids = _class_ids(rng, len(chars))
    fonts: dict[tuple[str, int], ImageFont.FreeTypeFont] = {}
    font_dir = _font_dir()

    def view(k):
        name, size = _FONTS[rng.integers(len(_FONTS))], int(rng.integers(15, 23)) * 2
        if (name, size) not in fonts:
            fonts[name, size] = ImageFont.truetype(str(font_dir / name), size)
        font = fonts[name, size]
        mask = Image.new("L", (64, 64), 0)
        ImageDraw.Draw(mask).text((32 + rng.normal(0, 3), 32 + rng.normal(0, 3)), chars[k], fill=255, font=font,
                                  anchor="mm")
        mask = mask.rotate(rng.normal(0, 8), resample=Image.Resampling.BICUBIC)
        paper = rng.uniform(150, 255, 3)
        ink = paper * rng.uniform(0, 0.45) + rng.uniform(-30, 30, 3)
        alpha = np.asarray(mask, dtype=np.float32)[..., None] / 255
        x = paper * (1 - alpha) + ink * alpha + rng.normal(0, 6, (64, 64, 1))
        return Image.fromarray(np.clip(x, 0, 255).astype(np.uint8))

    w = _Writer(root, "glyphs")
    ranks = rng.permutation(len(chars))
    for k in range(len(chars)):
        for _ in range(max(1, round(16 * (ranks[k] + 1) ** -0.5))):
            w.add("train", ids[k], view(k))
    order = rng.permutation(len(chars))
    for split, picked in (("val", order[:120]), ("test", order[120:270])):
        for k in picked:
            for _ in range(2):
                w.add(split, ids[k], view(k))
    return w.finish()


def _textures(root: Path, rng: np.random.Generator) -> dict[str, int]:
    sources = [_load(n) for n in ("brick.png", "grass.png", "gravel.png", "moon.png", "coins.png", "page.png",
                                  "camera.png", "cell.png")]
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
        for split, count in (("train", 32), ("val", 3), ("test", 3)):
            for _ in range(count):
                w.add(split, ids[k], view(k))
    return w.finish()


def _faces(root: Path, rng: np.random.Generator) -> dict[str, int]:
    faces = np.load(_skimage_data() / "lfw_subset.npy")[:100]
    sources = [Image.fromarray((f * 255).astype(np.uint8)).convert("RGB") for f in faces]
    ids = _class_ids(rng, len(sources))

    def view(k):
        center = 12.5 + rng.normal(0, 1.0, 2)
        image = _view(sources[k], center, 22 * rng.uniform(0.9, 1.1), (64, 64), rng.normal(0, 0.1))
        if rng.random() < 0.3:
            image = image.filter(ImageFilter.GaussianBlur(rng.uniform(0.5, 1.5)))
        return _light(image, rng, colour=0.0)

    w = _Writer(root, "faces")
    order = rng.permutation(len(sources))
    for k in range(len(sources)):
        for _ in range(5):
            w.add("train", ids[k], view(k))
    for split, picked in (("val", order[:40]), ("test", order[40:])):
        for k in picked:
            for _ in range(2):
                w.add(split, ids[k], view(k))
    return w.finish()


_DOMAINS = {"landmarks": _landmarks, "glyphs": _glyphs, "textures": _textures, "faces": _faces}


def write_builtin(out: str | os.PathLike, seed: int = 0) -> dict[str, dict[str, int]]:
    """Write the built-in dataset into `out` (created; must not hold files); returns {domain: {split: images}}."""
    out = Path(out)
    if out.exists() and any(out.iterdir()):
        raise FileExistsError(f"{out} is not empty; choose a new folder for the built-in dataset")
    out.mkdir(parents=True, exist_ok=True)
    with ProcessPoolExecutor(max_workers=min(len(_DOMAINS), os.cpu_count() or 1)) as pool:
        jobs = {name: pool.submit(make, out, np.random.default_rng([seed, i]))
                for i, (name, make) in enumerate(_DOMAINS.items())}
        return {name: job.result() for name, job in jobs.items()}


def default_cache_dir() -> Path:
    """$XDG_CACHE_HOME/udon_fast (default ~/.cache/udon_fast)."""
    return Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "udon_fast"


def ensure_builtin(cache_dir: str | os.PathLike | None = None, seed: int = 0) -> Path:
    """The built-in dataset's root (UnED layout), generated on first use.

    Lives in `<cache_dir or default_cache_dir()>/builtin-v1[-seed<N>]`; it counts as present only
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
