"""Read the UnED layout in place: `info_files/<domain>/<split>.json` plus `images/`.

Each info file is a JSON list of {"path": "<path relative to images/>", "class_id": int or [int, ...]}.
`load_domains` parses every split found, remaps class ids per domain (see `domain.py`) and checks
that every listed image exists and is readable, reporting all missing files in one error.
Plain folder-per-class domains (`folder.py`) can be loaded alongside.

Entries never reach outside `images/`: an absolute path, a path that climbs out with `..`, or one
holding a NUL byte is refused, naming the info file and the entry (`check_entry_paths`).  Symbolic
links inside `images/` are followed as they are: they are the user's own files (e.g. a domain kept
on another disk), while the info file is the part that may come from elsewhere.  An entry listed
twice in one info file is reported (a warning naming the file and the entry).
"""

import json
import logging
import os
import posixpath
from collections.abc import Iterable, Mapping
from pathlib import Path

from .domain import Domain, Split, build_class_map, labels_array, select_domains
from .errors import DatasetError, InfoFileError, MissingFilesError
from .folder import load_folder_domain
from .shards import is_shard_root, load_shard_domains

INFO_DIR = "info_files"
IMAGES_DIR = "images"
log = logging.getLogger(__name__)


def _entry_path_problem(path: str) -> str | None:
    if "\0" in path:
        return "holds a NUL byte"
    if path.startswith("/"):
        return f"is an absolute path (entries are paths relative to the data root's {IMAGES_DIR}/ folder)"
    normal = posixpath.normpath(path)
    if normal == ".." or normal.startswith("../"):
        return f"leads outside the data root's {IMAGES_DIR}/ folder ('..')"
    return None


def check_entry_paths(info_file: Path, paths: list[str]) -> None:
    """Raise `InfoFileError` naming the info file and the first entry whose path is absolute, climbs
    out of images/ or holds a NUL byte.  One scan of all paths joined (C speed); entries are looked at
    one by one only when that scan finds a suspect character sequence."""
    joined = "\n".join(paths)
    if "\0" not in joined and ".." not in joined and not joined.startswith("/") and "\n/" not in joined:
        return
    for i, path in enumerate(paths):
        problem = _entry_path_problem(path)
        if problem is not None:
            raise InfoFileError(f"{info_file}: entry {i} field 'path' {path!r} {problem}")


def report_duplicates(info_file: Path, paths: list[str]) -> None:
    """Log one warning naming the info file and its first repeated entry, if any entry is repeated."""
    repeated = len(paths) - len(set(paths))
    if not repeated:
        return
    first: dict[str, int] = {}
    for i, path in enumerate(paths):
        if path in first:
            log.warning(
                "%s: %d duplicate entr%s; the first: entry %d (%r) repeats entry %d",
                info_file,
                repeated,
                "y" if repeated == 1 else "ies",
                i,
                path,
                first[path],
            )
            return
        first[path] = i


def read_info_file(info_file: Path) -> tuple[list[str], list[list[int]]]:
    """Parse one info file into (relative paths, class-id lists); errors name file, entry and field."""
    try:
        entries = json.loads(info_file.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError) as exc:
        raise InfoFileError(f"{info_file}: cannot read info file ({exc})") from exc
    except json.JSONDecodeError as exc:
        raise InfoFileError(f"{info_file}: malformed JSON ({exc})") from exc
    except RecursionError as exc:
        raise InfoFileError(f"{info_file}: malformed JSON (nested too deeply)") from exc
    if not isinstance(entries, list):
        raise InfoFileError(f"{info_file}: expected a JSON list of entries, got {type(entries).__name__}")
    paths, class_ids = [], []
    for i, entry in enumerate(entries):
        if not isinstance(entry, dict):
            raise InfoFileError(
                f"{info_file}: entry {i} is {type(entry).__name__}, expected an object "
                f"with fields 'path' and 'class_id'"
            )
        for key in ("path", "class_id"):
            if key not in entry:
                raise InfoFileError(f"{info_file}: entry {i} has no field '{key}'")
        path, ids = entry["path"], entry["class_id"]
        if not isinstance(path, str) or not path:
            raise InfoFileError(f"{info_file}: entry {i} field 'path' must be a non-empty string, got {path!r}")
        ids = ids if isinstance(ids, list) else [ids]
        if not ids or not all(isinstance(c, int) and not isinstance(c, bool) for c in ids):
            raise InfoFileError(
                f"{info_file}: entry {i} field 'class_id' must be an int or a non-empty "
                f"list of ints, got {entry['class_id']!r}"
            )
        paths.append(path)
        class_ids.append(ids)
    check_entry_paths(info_file, paths)
    report_duplicates(info_file, paths)
    return paths, class_ids


def domain_names(data_root: Path) -> list[str]:
    """Sorted names of the domains under `data_root/info_files`."""
    info_root = Path(data_root) / INFO_DIR
    if not info_root.is_dir():
        raise DatasetError(
            f"{data_root}: no '{INFO_DIR}/' folder (expected the UnED layout "
            f"'{INFO_DIR}/<domain>/<split>.json' + '{IMAGES_DIR}/')"
        )
    return sorted(p.name for p in info_root.iterdir() if p.is_dir())


def load_uned_domain(data_root: Path, name: str) -> tuple[Domain, dict[str, list[str]]]:
    """One UnED domain, plus {info file: missing image paths} (empty when all exist)."""
    info_dir = Path(data_root) / INFO_DIR / name
    train_file = info_dir / "train.json"
    if not train_file.is_file():
        raise DatasetError(f"domain {name!r}: missing {train_file} (every domain needs a train split)")
    images_root = Path(data_root) / IMAGES_DIR
    parsed = {f.stem: (f, *read_info_file(f)) for f in sorted(info_dir.glob("*.json"))}
    for split, (info_file, rel_paths, _) in parsed.items():
        if not rel_paths:
            hint = "" if split == "train" else f" (remove the file if the domain has no {split} split)"
            raise InfoFileError(f"{info_file}: the {split} split is empty{hint}")
    others = [ids for split, (_, _, entries) in parsed.items() if split != "train" for ids in entries]
    class_map = build_class_map(parsed["train"][2], others)
    splits, missing = {}, {}
    for split, (info_file, rel_paths, class_ids) in parsed.items():
        paths = [str(images_root / p) for p in rel_paths]
        bad = [p for p in paths if not os.access(p, os.R_OK) or not os.path.isfile(p)]
        if bad:
            missing[str(info_file)] = bad
        splits[split] = Split(paths, labels_array(class_ids, class_map), name=split)
    num_classes = len({c for ids in parsed["train"][2] for c in ids})
    return Domain(name, splits["train"], splits, num_classes, class_map, info_dir), missing


def load_uned_domains(
    data_root: Path, domains: Iterable[str] | None = None
) -> tuple[dict[str, Domain], dict[str, list[str]]]:
    """The UnED domains under `data_root` (all, or `domains`), plus {info file: missing image paths}."""
    out, missing = {}, {}
    for name in select_domains(data_root, domain_names(data_root), domains):
        out[name], domain_missing = load_uned_domain(data_root, name)
        missing.update(domain_missing)
    return out, missing


def load_domains(
    data_root: str | os.PathLike | None,
    domains: Iterable[str] | None = None,
    folders: Mapping[str, str | os.PathLike] | None = None,
) -> dict[str, Domain]:
    """Domains by name, validated: UnED domains under `data_root` plus folder-per-class `folders`.

    data_root: a UnED root (`info_files/`, `images/`), a shard root (`index.json` and tar shards, see
        shards.py), or None when only `folders` are used.
    domains: the UnED domain names to load (default: all under `info_files/`).
    folders: {domain name: folder} for user domains in the `<class>/<image>` layout (see folder.py).
    Raises `MissingFilesError` (one error for all missing/unreadable images), `InfoFileError` for
    malformed info files, `DatasetError` for unknown domains or an unusable layout.
    """
    out, missing = {}, {}
    if data_root is not None:
        load = load_shard_domains if is_shard_root(data_root) else load_uned_domains
        out, missing = load(Path(data_root), domains)
    elif domains is not None:
        raise DatasetError("domains= needs a data_root to read the UnED domains from")
    for name, folder in (folders or {}).items():
        if name in out:
            raise DatasetError(f"folder domain {name!r} clashes with a UnED domain of the same name")
        out[name] = load_folder_domain(folder, name)
    if missing:
        raise MissingFilesError(missing)
    if not out:
        raise DatasetError(f"{data_root}: no domains found")
    return out
