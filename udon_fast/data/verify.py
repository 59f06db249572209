"""Check images up front: every listed file exists and decodes.

The check per file (`image_bytes.decode_check`) is the training one (`looks_complete`, which also
walks the JPEG header the way DALI's parser does) plus a full PIL decode.  `find_undecodable` runs
it in a thread pool (PIL releases the GIL) and remembers each verdict per (path, size, mtime, pixel
limit) in this process, so evaluating the same splits again (every validation of a run) re-checks nothing
that did not change.  Evaluation validates every image this way before DALI sees it
(`check_decodable`): DALI can crash the process on a damaged file instead of raising.

Splits read from tar shards (`shards.py`) are checked member by member, each named
"<tar file>:<member>", with verdicts cached per (member size, tar mtime).

`verify_dataset` is `python -m udon_fast.data verify`: every missing and every undecodable file of
a UnED root (or member of a shard root), with the splits that list it.
"""

import json
import os
from collections.abc import Callable, Iterable, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path

from ..extras import needs_extra

with needs_extra("train"):
    from tqdm import tqdm

from ..errors import InputError
from .domain import Domain, Split
from .errors import CorruptImagesError
from .image_bytes import decode_check, max_pixels
from .shards import is_shard_root, load_shard_domains
from .uned import load_uned_domains

POLICIES = ("fail", "warn")
_verdicts: dict[str, tuple[int, int, int, str | None]] = {}  # path -> (size, mtime_ns, pixel limit, reason or None)


def _stat_key(path: str) -> tuple[int, int, int] | None:
    try:
        stat = os.stat(path)
    except OSError:
        return None
    return stat.st_size, stat.st_mtime_ns, max_pixels()


Check = Callable[[], "str | None"]


def _member_key(members, i: int) -> tuple[int, int, int] | None:
    key = members.stat_key(i)
    return None if key is None else (*key, max_pixels())


def _entries(items: Iterable[str | Split]) -> dict[str, tuple[tuple[int, int, int] | None, Check]]:
    """{name: (cache key or None when missing, check)} of image files (paths) and of the images of
    splits (files, or tar shard members keyed by (member size, tar mtime)), each key ending with the
    pixel limit; first occurrence wins."""
    entries: dict[str, tuple[tuple[int, int, int] | None, Check]] = {}
    for item in items:
        if isinstance(item, str):
            if item not in entries:
                entries[item] = _stat_key(item), partial(decode_check, item)
            continue
        for i, name in enumerate(item.paths):
            if name not in entries:
                key = _stat_key(name) if item.members is None else _member_key(item.members, i)
                entries[name] = key, partial(decode_check, name) if item.members is None else partial(item.check, i)
    return entries


def _decode(name: str, key: tuple[int, int, int], check: Check) -> None:
    _verdicts[name] = (*key, check())


def find_undecodable(
    items: Iterable[str | Split], workers: int | None = None, progress: bool = False, desc: str = "check images"
) -> dict[str, str]:
    """{name: reason} of the images among `items` (image paths, or splits: files or tar shard members)
    that are missing or do not fully decode (in order).

    Decodes in `workers` threads (default: all cores); verdicts are cached per (name, size, mtime,
    pixel limit), so an image is decoded again only when it (its tar, or the limit) changed.
    """
    entries = _entries(items)
    pending = [
        (name, key, check)
        for name, (key, check) in entries.items()
        if key is not None and _verdicts.get(name, (None,))[:-1] != key
    ]
    if pending:
        with ThreadPoolExecutor(max_workers=workers or os.cpu_count() or 1) as pool:
            for _ in tqdm(
                pool.map(_decode, *zip(*pending)),
                total=len(pending),
                desc=desc,
                unit="img",
                leave=False,
                disable=not progress,
            ):
                pass
    bad = {}
    for name, (key, _) in entries.items():
        reason = "missing or unreadable" if key is None else _verdicts[name][-1]
        if reason is not None:
            bad[name] = reason
    return bad


def check_decodable(
    items: Iterable[str | Split], what: str = "", workers: int | None = None, progress: bool = False
) -> None:
    """Raise `CorruptImagesError` naming every image of `items` (paths or splits) that is missing or
    does not decode."""
    bad = find_undecodable(items, workers, progress)
    if bad:
        raise CorruptImagesError(bad, what)


@dataclass
class VerifyReport:
    """What `verify_dataset` found.

    counts: {domain: {split: images}}; missing: {path: info file listing it}; undecodable:
    {path: reason}; listed_in: {path: ["domain/split", ...]} for every missing or undecodable path;
    policy: "fail" (every bad file fails) or "warn" (undecodable files listed only by train splits
    are warnings: training skips them).
    """

    counts: dict[str, dict[str, int]]
    missing: dict[str, str] = field(default_factory=dict)
    undecodable: dict[str, str] = field(default_factory=dict)
    listed_in: dict[str, list[str]] = field(default_factory=dict)
    policy: str = "fail"

    def skippable(self, path: str) -> bool:
        """An undecodable file that training skips and no evaluation split lists."""
        return path in self.undecodable and all(where.endswith("/train") for where in self.listed_in[path])

    @property
    def bad(self) -> dict[str, str]:
        """{path: reason} of every missing or undecodable file."""
        return {**{p: f"missing (listed in {info})" for p, info in self.missing.items()}, **self.undecodable}

    @property
    def bad_by_split(self) -> dict[tuple[str, str], int]:
        """{(domain, split): number of missing or undecodable files it lists}."""
        counts: dict[tuple[str, str], int] = {}
        for path in self.bad:
            for where in self.listed_in[path]:
                key = tuple(where.rsplit("/", 1))
                counts[key] = counts.get(key, 0) + 1
        return counts

    @property
    def ok(self) -> bool:
        return self.exit_code == 0

    @property
    def warnings(self) -> list[str]:
        return [p for p in self.undecodable if self.policy == "warn" and self.skippable(p)]

    @property
    def failures(self) -> list[str]:
        warned = set(self.warnings)
        return [p for p in self.undecodable if p not in warned]

    @property
    def exit_code(self) -> int:
        """0: usable as is; 1 (a failed check, docs/cli.md): missing files, or undecodable files that fail
        under the policy."""
        return 1 if self.missing or self.failures else 0

    def lines(self) -> list[str]:
        """One line per missing or undecodable file (all of them)."""
        warned = set(self.warnings)
        out = [f"MISSING {p} (listed in {info})" for p, info in self.missing.items()]
        for path, reason in self.undecodable.items():
            where = ", ".join(self.listed_in[path])
            if path in warned:
                out.append(f"WARN {path}: {reason} [{where}; skipped by training]")
            else:
                out.append(f"BAD {path}: {reason} [{where}]")
        return out

    def summary(self) -> str:
        """Counts per domain/split and the totals."""
        bad_by_split = self.bad_by_split
        lines = [f"{'domain':<16}{'split':<14}{'images':>8}{'bad':>6}"]
        for domain, splits in self.counts.items():
            for split, n in splits.items():
                lines.append(f"{domain:<16}{split:<14}{n:>8}{bad_by_split.get((domain, split), 0):>6}")
        total = sum(n for splits in self.counts.values() for n in splits.values())
        lines.append(
            f"{total} images listed, {len(self.missing) + len(self.undecodable)} bad file(s): "
            f"{len(self.missing)} missing, {len(self.undecodable)} undecodable "
            f"({len(self.warnings)} of them warnings)"
        )
        return "\n".join(lines)

    def to_json(self) -> str:
        """The machine-readable report (`--json`)."""
        warned = set(self.warnings)
        doc = {
            "ok": self.exit_code == 0,
            "exit_code": self.exit_code,
            "policy": self.policy,
            "counts": self.counts,
            "missing": [
                {"path": p, "info_file": info, "listed_in": self.listed_in[p]} for p, info in self.missing.items()
            ],
            "undecodable": [
                {"path": p, "reason": r, "listed_in": self.listed_in[p], "warning": p in warned}
                for p, r in self.undecodable.items()
            ],
        }
        return json.dumps(doc, indent=2, ensure_ascii=False)


def verify_domains(
    domains: Mapping[str, Domain],
    workers: int | None = None,
    progress: bool = True,
    *,
    policy: str = "fail",
    missing: Mapping[str, Iterable[str]] | None = None,
) -> VerifyReport:
    """Decode every present image of every split of `domains` (see `VerifyReport`).

    missing: {info file: [paths]} of files already known to be missing (not decoded, reported).
    """
    if policy not in POLICIES:
        raise InputError(f"policy must be one of {POLICIES}, got {policy!r}")
    report = VerifyReport(
        {name: {s: len(split) for s, split in d.splits.items()} for name, d in domains.items()}, policy=policy
    )
    report.missing = {path: str(info) for info, paths in (missing or {}).items() for path in paths}
    listed: dict[str, list[str]] = {}
    for name, domain in domains.items():
        for split_name, split in domain.splits.items():
            for path in split.paths:
                listed.setdefault(path, []).append(f"{name}/{split_name}")
    found = find_undecodable(
        [split for d in domains.values() for split in d.splits.values()], workers, progress, desc="verify"
    )
    # a missing file, or every member of a missing tar shard ("<tar>:<member>"), is reported once, as missing
    report.undecodable = {
        p: reason
        for p, reason in found.items()
        if p not in report.missing and p.rpartition(":")[0] not in report.missing
    }
    report.listed_in = {p: sorted(set(listed[p])) for p in [*report.missing, *report.undecodable]}
    return report


def verify_dataset(
    data_root: str | os.PathLike,
    domains: list[str] | None = None,
    *,
    workers: int | None = None,
    policy: str = "fail",
    progress: bool = True,
) -> VerifyReport:
    """Check every image of every split of the UnED root or shard root `data_root`; missing files (or
    tar shards) do not stop the check (every present image is still decoded)."""
    load = load_shard_domains if is_shard_root(data_root) else load_uned_domains
    loaded, missing = load(Path(data_root), domains)
    return verify_domains(loaded, workers, progress, policy=policy, missing=missing)
