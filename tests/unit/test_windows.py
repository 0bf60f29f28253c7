"""Date windows: the helpers, the checks (ordered, non-empty, no overlap unless asked), the CLI
flags (cubes and tiling stores of several windows: tests/integration/test_time_cube.py,
tests/integration/test_time_tiling.py)."""

from __future__ import annotations

import geopandas as gpd
import pytest
from shapely.geometry import Point

from rsembed_dask import TemporalSpec, TemporalWindows
from rsembed_dask.cli.args import parse_window, read_windows_file, windows_given
from rsembed_dask.cli.commands import build_parser
from rsembed_dask.errors import SpecError


def _spans(windows):
    return [(w.start, w.end) for w in windows]


def test_years_are_calendar_years_inclusive():
    w = TemporalSpec.years(2019, 2024)
    assert isinstance(w, TemporalWindows) and len(w) == 6
    assert _spans(w)[0] == ("2019-01-01", "2020-01-01") and _spans(w)[-1] == ("2024-01-01", "2025-01-01")
    assert len(TemporalSpec.years(2022, 2022)) == 1
    with pytest.raises(SpecError, match="last"):
        TemporalSpec.years(2024, 2019)


def test_seasons_tile_twelve_months_from_the_start_month():
    assert _spans(TemporalSpec.seasons(2023)) == [("2023-01-01", "2023-04-01"), ("2023-04-01", "2023-07-01"),
                                                  ("2023-07-01", "2023-10-01"), ("2023-10-01", "2024-01-01")]
    djf = TemporalSpec.seasons(2023, months_per_window=3, start_month=12)
    assert _spans(djf)[0] == ("2023-12-01", "2024-03-01") and _spans(djf)[-1] == ("2024-09-01", "2024-12-01")
    # July-to-July years (the EU's agricultural year).
    assert _spans(TemporalSpec.seasons(2023, 12, start_month=7)) == [("2023-07-01", "2024-07-01")]
    with pytest.raises(SpecError, match="divisor of 12"):
        TemporalSpec.seasons(2023, months_per_window=5)


def test_every_steps_months_or_days_and_cuts_the_last_window():
    assert _spans(TemporalSpec.every("2023-01-31", "2023-04-30", months=1)) == [
        ("2023-01-31", "2023-02-28"), ("2023-02-28", "2023-03-31"), ("2023-03-31", "2023-04-30")]
    days = TemporalSpec.every("2023-01-01", "2023-01-20", days=7)
    assert _spans(days)[-1] == ("2023-01-15", "2023-01-20") and len(days) == 3
    with pytest.raises(SpecError, match="exactly one of months= or days="):
        TemporalSpec.every("2023-01-01", "2024-01-01", months=1, days=7)
    with pytest.raises(SpecError, match="exactly one"):
        TemporalSpec.every("2023-01-01", "2024-01-01")


def test_windows_are_ordered_non_empty_and_apart_unless_asked():
    a, b = TemporalSpec.range("2023-01-01", "2023-07-01"), TemporalSpec.range("2023-06-01", "2024-01-01")
    with pytest.raises(SpecError, match=r"windows\[1\]='2023-06-01..2024-01-01'.*2023-07-01.*--allow-overlap"):
        TemporalWindows.of([a, b])
    assert len(TemporalWindows.of([a, b], allow_overlap=True)) == 2
    with pytest.raises(SpecError, match=r"windows\[1\].*starting after windows\[0\]"):
        TemporalWindows.of([b, a], allow_overlap=True)
    with pytest.raises(SpecError, match=r"windows\[1\]"):  # the same window twice, even with overlap allowed
        TemporalWindows.of([a, a], allow_overlap=True)
    with pytest.raises(SpecError, match="at least one window"):
        TemporalWindows.of([])
    with pytest.raises(SpecError, match=r"windows\[1\]"):
        TemporalWindows.of([a, "2024"])
    # Back to back is not an overlap (the end is exclusive).
    assert len(TemporalWindows.of([TemporalSpec.year(2022), TemporalSpec.year(2023)])) == 2


def test_windows_round_trip_through_json():
    w = TemporalWindows.of(TemporalSpec.seasons(2023), allow_overlap=True)
    assert TemporalWindows.from_json(w.to_json()) == w


def _args(*argv):
    args, _ = build_parser().parse_known_args(["run", "pts.gpkg", "--out", "o.zarr", *argv])
    return args


def test_cli_window_flags(tmp_path):
    assert _spans(windows_given(_args("--start", "2022-01-01", "--end", "2022-04-01"))) == [("2022-01-01", "2022-04-01")]
    assert len(windows_given(_args("--years", "2019-2024"))) == 6
    assert _spans(windows_given(_args("--years", "2022"))) == [("2022-01-01", "2023-01-01")]
    two = windows_given(_args("--window", "2023-01-01:2023-04-01", "--window", "2023-04-01:2023-07-01"))
    assert _spans(two) == [("2023-01-01", "2023-04-01"), ("2023-04-01", "2023-07-01")]
    f = tmp_path / "w.txt"
    f.write_text("# seasons\n2023-01-01:2023-04-01\n\n2023-04-01 2023-07-01  # spring\n2024\n")
    assert _spans(windows_given(_args("--windows", str(f)))) == [
        ("2023-01-01", "2023-04-01"), ("2023-04-01", "2023-07-01"), ("2024-01-01", "2025-01-01")]
    rolling = ["--window", "2022-01-01:2023-01-01", "--window", "2022-07-01:2023-07-01"]
    with pytest.raises(SpecError, match="allow-overlap"):
        windows_given(_args(*rolling))
    assert len(windows_given(_args(*rolling, "--allow-overlap"))) == 2


def test_cli_window_flags_refuse_mixtures_and_name_the_bad_line(tmp_path):
    with pytest.raises(SpecError, match="--start/--end and --years"):
        windows_given(_args("--start", "2022-01-01", "--end", "2023-01-01", "--years", "2019-2024"))
    with pytest.raises(SpecError, match="--start and --end together"):
        windows_given(_args("--start", "2022-01-01"))
    with pytest.raises(SpecError, match="a date window: --start/--end, --years, --window or --windows"):
        windows_given(_args())
    with pytest.raises(SpecError, match="--years"):
        windows_given(_args("--years", "2019..2024"))
    with pytest.raises(SpecError, match="START:END"):
        parse_window("2023-04-01:2023-01-01")
    f = tmp_path / "w.txt"
    f.write_text("2023-01-01:2023-04-01\n2023-13-01:2023-14-01\n")
    with pytest.raises(SpecError, match=r"line 2"):
        read_windows_file(f)
    with pytest.raises(SpecError, match="readable file"):
        read_windows_file(tmp_path / "missing.txt")


def test_a_tiling_takes_several_windows_and_append_windows():
    """A tiling over several windows is a store with time (tests/integration/test_time_tiling.py):
    the CLI accepts --years and --append-windows with --tile."""
    from rsembed_dask.cli.commands import build_parser

    p = build_parser()
    args = p.parse_args(["run", "3.0,31.2,3.02,31.22", "--tile", "--out", "c.zarr", "--years", "2019-2020",
                         "--append-windows"])
    args.check(args)  # no argparse error
    assert len(windows_given(args)) == 2 and args.append_windows
