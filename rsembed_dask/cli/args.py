"""Arguments shared by ``rsembed-dask`` subcommands: scale lists, bbox positionals, Earth Engine options.

The subcommands themselves are in :mod:`rsembed_dask.cli`.
"""

from __future__ import annotations

import argparse
import re

from ..specs import DEFAULT_SCALES

__all__ = ["add_scales", "scales_given", "add_aoi_positional", "aoi_arg", "take_negative_bbox", "add_ee_options",
           "gee_options", "positive_int", "positive_seconds", "add_storage_options", "storage_options",
           "store_location"]

_NUMBER = r"\s*[-+]?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?\s*"
#: Comma-separated numbers (a bbox, well formed or not): "-10,35,40,70", "1,2".
_NUMBER_LIST = re.compile(rf"^{_NUMBER}(?:,{_NUMBER})+$")


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


def aoi_arg(text: str) -> str:
    """argparse type of an AOI: a bbox (comma-separated numbers, spaces dropped) or a file path.

    :func:`~rsembed_dask.geo.aoi.read_aoi` parses it when the command runs (one parser, one
    message, whether the bbox came as a positional or from a script).

    Examples
    --------
    >>> aoi_arg("-10, 35,40,70")
    '-10,35,40,70'
    >>> aoi_arg("aoi.geojson")
    'aoi.geojson'
    """
    if not _NUMBER_LIST.match(text):
        return text
    return ",".join(v.strip() for v in text.split(","))


def add_aoi_positional(p: argparse.ArgumentParser, dest: str, metavar: str, help: str) -> None:
    """An AOI positional (:func:`aoi_arg`) that also takes a bbox whose first number is negative.

    argparse reads ``-10,35,40,70`` as an unknown option, not a positional; such a
    bbox is left among the unknown arguments and :func:`take_negative_bbox` takes it
    from there. So the positional is optional for argparse and required by that function.
    """
    p.add_argument(dest, metavar=metavar, nargs="?", default=None, type=aoi_arg, help=help)
    p.set_defaults(aoi_positional=(p, dest, metavar))


def take_negative_bbox(args: argparse.Namespace, unknown: list[str]) -> list[str]:
    """Take the AOI of :func:`add_aoi_positional` from ``unknown`` (of ``parse_known_args``) when
    argparse took it for an option; return the arguments still unknown.

    Exits (argparse's ``error``, status 2) when the AOI is missing.
    """
    given = getattr(args, "aoi_positional", None)
    if given is None:
        return unknown
    p, dest, metavar = given
    rest = []
    for arg in unknown:
        if getattr(args, dest) is None and _NUMBER_LIST.match(arg):
            setattr(args, dest, aoi_arg(arg))
        else:
            rest.append(arg)
    if getattr(args, dest) is None:
        p.error(f"the following arguments are required: {metavar}")
    return rest


def add_storage_options(p: argparse.ArgumentParser) -> None:
    """``--storage-option KEY=VALUE`` (repeatable): obstore config keys for s3://, gs://, az:// stores."""
    p.add_argument("--storage-option", action="append", default=[], metavar="KEY=VALUE",
                   help="for an s3://, gs:// or az:// store: an obstore config key (e.g. region=eu-west-1; "
                        "repeatable). Credentials are better left to the environment (AWS_*, GOOGLE_*, AZURE_*)")


def storage_options(args: argparse.Namespace) -> dict[str, str]:
    """The ``--storage-option`` pairs as a dict (SpecError for an item without ``=``)."""
    from ..store.location import parse_storage_options

    return parse_storage_options(getattr(args, "storage_option", None) or [])


def store_location(args: argparse.Namespace, dest: str):
    """The argument ``dest`` as a :class:`~rsembed_dask.store.location.StoreLocation`, with the
    ``--storage-option`` pairs when it is a URL."""
    from ..store.location import StoreLocation, is_url

    value = getattr(args, dest)
    return StoreLocation.parse(value, storage_options(args) if is_url(value) else None)


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
