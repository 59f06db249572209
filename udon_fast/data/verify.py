"""Check a whole dataset up front: the layout validates and every image decodes.

The check per file is the training one (`looks_complete`) plus a full PIL decode; files listed
by several splits are decoded once.  Decoding runs in a thread pool (PIL releases the GIL).
"""
import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Mapping

from tqdm import tqdm

from .domain import Domain
from .image_bytes import decode_check


@dataclass
class VerifyReport:
    """counts: {domain: {split: images}}; bad: {path: reason}; bad_by_split: {(domain, split): count}."""

    counts: dict[str, dict[str, int]]
    bad: dict[str, str] = field(default_factory=dict)
    bad_by_split: dict[tuple[str, str], int] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return not self.bad

    def summary(self, shown: int = 20) -> str:
        """A human-readable table of counts per domain/split and the bad files (first `shown`)."""
        lines = [f"{'domain':<16}{'split':<14}{'images':>8}{'bad':>6}"]
        for domain, splits in self.counts.items():
            for split, n in splits.items():
                lines.append(f"{domain:<16}{split:<14}{n:>8}{self.bad_by_split.get((domain, split), 0):>6}")
        total = sum(n for splits in self.counts.values() for n in splits.values())
        lines.append(f"{total} images listed, {len(self.bad)} bad file(s)")
        for path, reason in list(self.bad.items())[:shown]:
            lines.append(f"  BAD {path}: {reason}")
        if len(self.bad) > shown:
            lines.append(f"  ... and {len(self.bad) - shown} more")
        return "\n".join(lines)


def verify_domains(domains: Mapping[str, Domain], workers: int | None = None, progress: bool = True) -> VerifyReport:
    """Decode every image of every split of `domains`; see `VerifyReport`."""
    report = VerifyReport({name: {s: len(split) for s, split in d.splits.items()} for name, d in domains.items()})
    unique = sorted({p for d in domains.values() for split in d.splits.values() for p in split.paths})
    with ThreadPoolExecutor(max_workers=workers or os.cpu_count() or 1) as pool:
        verdicts = list(tqdm(pool.map(decode_check, unique), total=len(unique), desc="verify", unit="img",
                             disable=not progress))
        report.bad = {path: reason for path, reason in zip(unique, verdicts) if reason is not None}
    for name, d in domains.items():
        for s, split in d.splits.items():
            count = sum(p in report.bad for p in split.paths)
            if count:
                report.bad_by_split[(name, s)] = count
    return report

