"""The XRT products a job can ask for, by the long name users write and the short name on the wire."""

from __future__ import annotations

from collections.abc import Iterable

# Long name (Python API, result keys) -> short name (UKSSDC wire), in the official client's order.
LONG_TO_SHORT: dict[str, str] = {
    "LightCurve": "lc",
    "Spectrum": "spec",
    "StandardPos": "psf",
    "EnhancedPos": "enh",
    "AstromPos": "xastrom",
    "Image": "image",
    "SourceDet": "sourceDet",
}
SHORT_TO_LONG: dict[str, str] = {short: long for long, short in LONG_TO_SHORT.items()}
ALL = "all"
# The products listOldJobs.php never flags (the SourceDet rule): a job is asked about them whatever
# its listing says, and a "no such product" answer (code 2) for one of them is dropped.
UNLISTED_PRODUCTS: tuple[str, ...] = ("SourceDet",)


def never_flagged(flagged: Iterable[str]) -> list[str]:
    """The products listOldJobs.php cannot flag that are not among the long names `flagged`."""
    names = set(flagged)
    return [name for name in UNLISTED_PRODUCTS if name not in names]


class UnknownProduct(ValueError):
    """A product name that is neither a long nor a short XRT product name."""

    def __init__(self, name: str) -> None:
        super().__init__(
            f"unknown product {name!r}; expected one of {', '.join(LONG_TO_SHORT)} "
            f"or {', '.join(SHORT_TO_LONG)}"
        )
        self.name = name


def long_name(name: str) -> str:
    """The long name for a long or short product name."""
    if name in LONG_TO_SHORT:
        return name
    if name in SHORT_TO_LONG:
        return SHORT_TO_LONG[name]
    raise UnknownProduct(name)


def normalise(names: Iterable[str]) -> list[str]:
    """Long names, duplicates collapsed, in the canonical order; raises `UnknownProduct`."""
    wanted = {long_name(name) for name in names}
    return [name for name in LONG_TO_SHORT if name in wanted]


def short_names(long_names: Iterable[str]) -> list[str]:
    return [LONG_TO_SHORT[name] for name in long_names]
