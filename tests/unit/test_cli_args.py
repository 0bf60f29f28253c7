"""The AOI positional takes a bbox whose first number is negative, with argparse's public API only."""

from __future__ import annotations

import pytest

from rsembed_dask.cli.args import take_negative_bbox
from rsembed_dask.cli.commands import build_parser


def _parse(argv):
    args, unknown = build_parser().parse_known_args(argv)
    return args, take_negative_bbox(args, unknown)


@pytest.mark.parametrize("argv, aoi", [(["plan", "-10,35,40,70", "--scales", "40"], "-10,35,40,70"),
                                       (["plan", "--scales", "40", "--", "-10, 35, 40, 70"], "-10,35,40,70"),
                                       (["plan", "10,35,40,70"], "10,35,40,70"),
                                       (["plan", "aoi.geojson"], "aoi.geojson")])
def test_plan_aoi(argv, aoi):
    args, rest = _parse(argv)
    assert args.aoi == aoi and rest == []


def test_run_tile_takes_a_negative_bbox_and_leaves_other_unknowns():
    args, rest = _parse(["run", "-3.05,31.0,-3.0,31.05", "--tile", "--out", "o.zarr", "--start", "2022-01-01",
                         "--end", "2022-02-01", "--bogus"])
    assert args.samples == "-3.05,31.0,-3.0,31.05" and args.tile and rest == ["--bogus"]


def test_a_missing_aoi_is_argparses_error(capsys):
    with pytest.raises(SystemExit) as exc:
        _parse(["plan", "--scales", "40"])
    assert exc.value.code == 2 and "the following arguments are required: AOI" in capsys.readouterr().err
