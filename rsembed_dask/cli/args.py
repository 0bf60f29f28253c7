"""Arguments shared by ``rsembed-dask`` subcommands: scale lists, bbox positionals, Earth Engine options.

The subcommands themselves are in :mod:`rsembed_dask.cli`.
"""

from __future__ import annotations

import argparse
import re

from pathlib import Path

from ..errors import SpecError
from ..specs import DEFAULT_SCALES, TemporalSpec, TemporalWindows

__all__ = ["add_scales", "scales_given", "add_aoi_positional", "aoi_arg", "take_negative_bbox", "add_ee_options",
           "gee_options", "positive_int", "positive_seconds", "add_storage_options", "storage_options",
           "store_location", "add_windows", "windows_given", "parse_window", "parse_years", "read_windows_file",
           "window_flags_given"]

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


#: The flags that give date windows, as one phrase for messages.
WINDOW_FLAGS = "--start/--end, --years, --window or --windows"


def add_windows(p: argparse.ArgumentParser, default: tuple[str, str] | None = None) -> None:
    """The date-window flags (read back with :func:`windows_given`): ``--start``/``--end``
    (one window), ``--years 2019-2024``, ``--window START:END`` (repeatable), ``--windows FILE``
    and ``--allow-overlap``. ``default``: the ``(start, end)`` used when no flag is given
    (else one of them is required)."""
    d = f" (default {default[0]})" if default else ""
    p.add_argument("--start", default=None, help=f"first day, YYYY-MM-DD{d}")
    p.add_argument("--end", default=None, help="day after the last, YYYY-MM-DD (exclusive)"
                                               + (f" (default {default[1]})" if default else ""))
    p.add_argument("--years", default=None, metavar="Y0-Y1",
                   help="one window per calendar year, Y0 to Y1 inclusive: 2019-2024 (or one year: 2022)")
    p.add_argument("--window", action="append", default=None, metavar="START:END",
                   help="a window [START, END) as YYYY-MM-DD:YYYY-MM-DD; repeat for several, in order")
    p.add_argument("--windows", default=None, metavar="FILE",
                   help="a file of windows, one per line: START:END (or START END, or a year); # comments")
    p.add_argument("--allow-overlap", action="store_true", help="accept windows that overlap (e.g. rolling years)")
    p.set_defaults(window_default=default)


def parse_years(text: str) -> TemporalWindows:
    """``"2019-2024"`` -> six calendar years; ``"2022"`` -> one.

    >>> len(parse_years("2019-2024")), parse_years("2022")[0].end
    (6, '2023-01-01')
    """
    parts = text.strip().split("-")
    try:
        years = [int(v) for v in parts]
    except ValueError:
        raise SpecError("--years", text, "Y0-Y1 (years, inclusive), e.g. 2019-2024, or one year") from None
    if len(years) not in (1, 2):
        raise SpecError("--years", text, "Y0-Y1 (years, inclusive), e.g. 2019-2024, or one year")
    return TemporalSpec.years(years[0], years[-1])


def parse_window(text: str, where: str = "--window") -> TemporalSpec:
    """``"2023-01-01:2023-04-01"`` (also space- or comma-separated) -> a window; a bare year
    (``"2022"``) -> that calendar year.

    >>> parse_window("2023-01-01:2023-04-01")
    TemporalSpec(start='2023-01-01', end='2023-04-01')
    """
    t = text.strip()
    if t.isdigit() and len(t) == 4:
        return TemporalSpec.year(int(t))
    for sep in (":", ",", None):
        parts = t.split(sep)
        if len(parts) == 2 and all(p.strip() for p in parts):
            try:
                return TemporalSpec.range(parts[0].strip(), parts[1].strip())
            except SpecError as e:
                raise SpecError(where, text, f"START:END with END after START, both YYYY-MM-DD ({e.allowed})") from None
    raise SpecError(where, text, "START:END as YYYY-MM-DD:YYYY-MM-DD (END exclusive), or a year")


def read_windows_file(path: str | Path) -> list[TemporalSpec]:
    """The windows of a ``--windows`` file: one per line (:func:`parse_window`), blank lines and
    ``#`` comments ignored. Errors name the file and line."""
    try:
        lines = Path(path).read_text().splitlines()
    except OSError as e:
        raise SpecError("--windows", str(path), f"a readable file of windows ({e.strerror or e})") from None
    out = []
    for n, line in enumerate(lines, start=1):
        text = line.split("#", 1)[0].strip()
        if text:
            out.append(parse_window(text, where=f"--windows {path} line {n}"))
    if not out:
        raise SpecError("--windows", str(path), "a file with at least one window (START:END per line)")
    return out


def window_flags_given(args: argparse.Namespace) -> bool:
    """Whether any date-window flag of :func:`add_windows` was given (not just its default)."""
    return any(getattr(args, k, None) for k in ("start", "end", "years", "window", "windows"))


def windows_given(args: argparse.Namespace) -> TemporalWindows:
    """The checked windows of :func:`add_windows`' flags: exactly one way of giving them.

    Raises
    ------
    SpecError
        When no way or two ways are used, ``--start`` comes without ``--end``, or the windows
        are out of order, empty or overlap without ``--allow-overlap``.
    """
    start, end = getattr(args, "start", None), getattr(args, "end", None)
    given = [name for name, value in (("--start/--end", start is not None or end is not None),
                                      ("--years", getattr(args, "years", None) is not None),
                                      ("--window", bool(getattr(args, "window", None))),
                                      ("--windows", getattr(args, "windows", None) is not None)) if value]
    overlap = bool(getattr(args, "allow_overlap", False))
    if len(given) > 1:
        raise SpecError(" and ".join(given), "both given", f"one way of giving windows: {WINDOW_FLAGS}")
    if not given:
        default = getattr(args, "window_default", None)
        if default is None:
            raise SpecError("windows", None, f"a date window: {WINDOW_FLAGS}")
        return TemporalWindows.of(TemporalSpec.range(*default), overlap)
    if given[0] == "--start/--end":
        if start is None or end is None:
            raise SpecError("--end" if end is None else "--start", None,
                            "--start and --end together (a window [start, end))")
        return TemporalWindows.of(TemporalSpec.range(start, end), overlap)
    if given[0] == "--years":
        return TemporalWindows.of(parse_years(args.years), overlap)
    if given[0] == "--window":
        return TemporalWindows.of([parse_window(w) for w in args.window], overlap)
    return TemporalWindows.of(read_windows_file(args.windows), overlap)
