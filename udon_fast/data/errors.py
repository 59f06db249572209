"""Errors raised while reading a dataset; all are `udon_fast.errors.DataError`s (so `ValueError`s) that name
the file and field."""

from ..errors import DataError


class DatasetError(DataError):
    """A dataset that cannot be used as given."""


class InfoFileError(DatasetError):
    """An info file (or folder layout) that is malformed: names the file, the entry and the field."""


class MissingFilesError(DatasetError):
    """Image files that are listed but missing or unreadable, reported together.

    `missing` maps each info file (str) to the list of absolute image paths it lists that are missing.
    """

    def __init__(self, missing: dict[str, list[str]], shown: int = 5):
        self.missing = missing
        total = sum(len(paths) for paths in missing.values())
        lines = [f"{total} image file(s) listed in {len(missing)} info file(s) are missing or unreadable:"]
        for info_file, paths in missing.items():
            more = f" (+{len(paths) - shown} more)" if len(paths) > shown else ""
            lines.append(f"  {info_file}: {len(paths)} missing, first: {', '.join(paths[:shown])}{more}")
        super().__init__("\n".join(lines))


class CorruptImageError(DatasetError):
    """An image file whose bytes cannot be decoded (named by `path`)."""

    def __init__(self, path: str, reason: str):
        self.path = path
        super().__init__(f"{path}: cannot decode image ({reason})")


class CorruptImagesError(CorruptImageError):
    """Image files that cannot be decoded, all reported in one line.

    `bad` maps each path (str) to the reason it fails; `path` is the first of them.
    """

    def __init__(self, bad: dict[str, str], what: str = ""):
        self.bad = dict(bad)
        self.path = next(iter(self.bad))
        listed = "; ".join(f"{path} ({reason})" for path, reason in self.bad.items())
        DatasetError.__init__(
            self, f"{len(self.bad)} image file(s){' ' + what if what else ''} cannot be decoded: {listed}"
        )
