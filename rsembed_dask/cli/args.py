"""Arguments shared by ``rsembed-dask`` subcommands: scale lists, bbox positionals, Earth Engine options.

The subcommands themselves are in :mod:`rsembed_dask.cli`.
"""

from __future__ import annotations

import argparse
import re

from ..specs import DEFAULT_SCALES

__all__ = ["add_scales", "scales_given", "allow_bbox_positional", "add_ee_options", "gee_options",
           "positive_int", "positive_seconds"]

# A number, or comma-separated numbers: "-10", "-10,35,40,70".
_NUMBER_LIST = re.compile(r"^-\d*\.?\d+(,\s*-?\d*\.?\d+)*$")


def _scales(text: str) -> list[float]:
    try:
        return [float(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"--scales {text!r}: expected comma-separated metres, e.g. 10,20,40") from None


def positive_int(text: str) -> int:
    """argparse type: an integer >= 1 (``--samples 0`` is refused before anything runs)."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r}: expected an integer >= 1") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"{text!r}: expected an integer >= 1")
    return value


def positive_seconds(text: str) -> float:
    """argparse type: a number of seconds > 0."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r}: expected a number of seconds > 0") from None
    if not value > 0 or value == float("inf"):
        raise argparse.ArgumentTypeError(f"{text!r}: expected a number of seconds > 0")
    return value


def add_scales(p: argparse.ArgumentParser) -> None:
    """``--scales 10 20 40`` or ``--scales 10,20,40`` (read back with :func:`scales_given`)."""
    p.add_argument("--scales", nargs="+", type=_scales, default=[list(DEFAULT_SCALES)],
                   help="pixel sizes in metres: 10 20 40 or 10,20,40 (default 10 20 40)")


def scales_given(args: argparse.Namespace) -> list[float]:
    """The scales of :func:`add_scales`, flat: ``[[10.0], [20.0, 40.0]] -> [10.0, 20.0, 40.0]``."""
    return [s for group in args.scales for s in group]


def allow_bbox_positional(p: argparse.ArgumentParser) -> None:
    """Let ``p`` take a bbox with a negative first number (``-10,35,40,70``) as a positional.

    argparse reads anything starting with ``-`` as an option unless it looks like a
    negative number; this widens "number" to comma-separated number lists.
    """
    if hasattr(p, "_negative_number_matcher"):
        p._negative_number_matcher = _NUMBER_LIST


def add_ee_options(p: argparse.ArgumentParser) -> None:
    """``--ee-url``, ``--ee-project`` and ``--credentials`` (read back with :func:`gee_options`)."""
    p.add_argument("--ee-url", default=None, help="Earth Engine API URL (default: Google's)")
    p.add_argument("--ee-project", default=None, help="Earth Engine cloud project")
    p.add_argument("--credentials", default=None, help="service-account key file")


def gee_options(args: argparse.Namespace) -> dict:
    """``gee_options`` for :func:`~rsembed_dask.providers.backends.open_backend` from the parsed arguments."""
    opts = {}
    if getattr(args, "ee_url", None):
        opts["api_url"] = args.ee_url
    if getattr(args, "ee_project", None):
        opts["project"] = args.ee_project
    if getattr(args, "credentials", None):
        opts["credentials"] = args.credentials
    if getattr(args, "max_retries", None) is not None:
        from ..providers.retry import RetryPolicy

        opts["retry"] = RetryPolicy(max_retries=args.max_retries)
    return opts
