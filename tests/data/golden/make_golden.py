"""Write the golden files that ``tests/integration/test_golden.py`` compares the code to.

!!! REGENERATING THESE FILES REDEFINES THE ON-DISK FORMAT !!!
Every cube written before stores its samples in Hilbert order with their geohashes,
its samples' UTM zones, its tile ids and its campaign spec's identity and hash. If
any of those rules changes, every existing cube is refused (or, worse, resumed with
samples in another order). Regenerate only for a deliberate format change, bump
``CUBE_VERSION`` with it, and say so in the changelog. A refactor (moving modules,
renaming, vectorising) must pass ``test_golden.py`` against the files as they are:
never regenerate to make it pass.

What is pinned
--------------
``points.npy``
    Inputs: 2,000 points from ``numpy.random.default_rng(1407)`` (lon uniform in
    [-180, 180], lat in [-80, 84]), 300 in a 0.05 degree box (so that the Hilbert bit
    depth shows in the order: coarser keys are prefixes of finer ones, and only points
    sharing a coarse cell are ordered differently), then the named edge cases of
    ``edge_cases.json`` (zone seams and the floats either side of them, lat 0 and -0.0,
    lat 84 and -80, lon +-180, Norway/Svalbard, Hilbert ties).
``hilbert_order.npy``, ``hilbert_keys.npy``, ``hilbert_grid4_keys.npy``
    ``hilbert_order`` of the points; their 16-bit keys from an independent scalar
    xy2d (their stable argsort must be that order); the keys of every cell of a
    16 x 16 grid (bits=4), read from the order.
``geohash.json``
    ``geohash_encode`` (precision 9) of the points, checked against an independent
    scalar encoder here.
``utm_epsg.npy``, ``edge_cases.json``
    The EPSG code of every point. Every copy of the zone rule must give it:
    ``grid.utm_epsg``, ``sampling._utm_epsg``, ``tiling._zone_crs`` (on a point), and
    ``tiling._tile_zone``'s ownership test (through ``tile_aoi``: each tile's zone is its
    centre's). The Norway (32V) and Svalbard (31X-37X) exceptions are NOT applied: the
    edge cases record the standard zones the code gives.
``sample_table_input.geojson``, ``sample_table.json``
    ``build_sample_table`` of 30 points and polygons (both hemispheres, zone seams, the
    antimeridian, a multipolygon) in shuffled order: ids from a column and from the
    index in table order, zone, kind, geohash, centroid.
``tiling.json``
    ``tile_aoi`` of three small AOIs (across 6 E, across the equator at 0 E, at 180 E):
    every tile id per scale in table order, zones, and ``Tiling.token()``.
``spec_hash.json``
    ``spec_hash``, ``to_json`` and the stored identity of the specs of
    ``test_golden.golden_specs()``.
``constants.json``
    Geohash precision, Hilbert bits, cube layout version, marker attribute, status codes.
``cube_v1/``, ``cube_v1_samples.geojson``, ``cube_v1.json``, ``cube_v1_embedding.npy``
    A cube written by ``run_campaign`` (10 samples x 2 scales, ``test-tiny``,
    ``backend="emulator"``, chunk size 4: 6 units), then unit ``(start=4, scale 20 m)``
    reset to pending with zarr (status, data and error back to their fill values, as if
    never written). Its input, its ids, coordinates and status, and every embedding as
    computed before the reset. (Named without ``.zarr``: ``.gitignore`` ignores ``*.zarr/``.)

How to regenerate
-----------------
From the repository root, after reading the warning above::

    PYTHONPATH=$PWD .venv/bin/python tests/data/golden/make_golden.py --force

Without ``--force`` nothing is overwritten. ``--cube-only`` / ``--no-cube`` limit the run.
The pinned behaviour is called through the helpers of ``tests/integration/test_golden.py`` (one import
block there), so this script and the test can never call different functions.
"""

from __future__ import annotations

import argparse
import json
import pathlib
import shutil
import sys

import numpy as np

GOLDEN = pathlib.Path(__file__).resolve().parent
ROOT = GOLDEN.parents[2]

N_RANDOM = 2000
N_CLUSTER = 300  # in a 0.05 degree box: about 9 x 18 Hilbert cells, so the bit depth shows in the order
SEED = 1407
PENDING_UNIT = (4, 1)  # (start, scale index) of the unit left pending in cube_v1

# Named edge cases: (name, lon, lat). Norway/Svalbard names give the exception zone the
# code does NOT apply; the pinned EPSG is the standard one.
SEAMS = (-180.0, -174.0, -6.0, 0.0, 6.0, 12.0, 174.0, 180.0)


def edge_points() -> list[tuple[str, float, float]]:
    cases = []
    for s in SEAMS:
        cases += [(f"seam lon={s:g} lat=45", s, 45.0), (f"seam lon={s:g} lat=-45", s, -45.0)]
        below, above = float(np.nextafter(s, -np.inf)), float(np.nextafter(s, np.inf))
        if below >= -180.0:
            cases.append((f"one ulp west of seam lon={s:g}", below, 45.0))
        if above <= 180.0:
            cases.append((f"one ulp east of seam lon={s:g}", above, 45.0))
    cases += [
        ("lat 0 at lon 3", 3.0, 0.0), ("lat -0.0 at lon 3 (north, like 0)", 3.0, -0.0),
        ("lat 0 at seam lon 0", 0.0, 0.0), ("lat -0.0 at seam lon 0", 0.0, -0.0),
        ("smallest negative lat", 3.0, -5e-324), ("smallest positive lat", 3.0, 5e-324),
        ("lat 84 (UTM north limit)", 3.0, 84.0), ("lat -80 (UTM south limit)", 3.0, -80.0),
        ("lat 84 at lon 180", 180.0, 84.0), ("lat -80 at lon -180", -180.0, -80.0),
        ("Bergen, Norway (32V not applied)", 5.32, 60.39), ("Norway 32V corner 3E 56N (not applied)", 3.0, 56.0),
        ("Norway 32V, lon 11.9 (standard 32 too)", 11.9, 63.9),
        ("Svalbard 10E (33X not applied)", 10.0, 78.0), ("Svalbard 20E (33X not applied)", 20.0, 78.0),
        ("Svalbard 35E (37X not applied)", 35.0, 78.0), ("Svalbard 8E at 83.9N (31X not applied)", 8.0, 83.9),
        ("Hilbert tie a", 3.25, 31.25), ("Hilbert tie b (same cell)", 3.2500001, 31.2500001),
        ("Hilbert tie c (same point)", 3.25, 31.25),
    ]
    return cases


def make_points() -> tuple[np.ndarray, list[tuple[str, float, float]]]:
    rng = np.random.default_rng(SEED)
    lon = rng.uniform(-180.0, 180.0, N_RANDOM)
    lat = rng.uniform(-80.0, 84.0, N_RANDOM)
    lon = np.r_[lon, rng.uniform(3.1, 3.15, N_CLUSTER)]
    lat = np.r_[lat, rng.uniform(31.1, 31.15, N_CLUSTER)]
    edges = edge_points()
    pts = np.concatenate([np.column_stack([lon, lat]), np.array([(x, y) for _, x, y in edges], float)])
    return pts, edges


def hilbert_key_ref(lon: float, lat: float, bits: int) -> int:
    """Scalar xy2d (Wikipedia) of the lon/lat cell, in Python ints."""
    n = 1 << bits
    x = min(max(int((lon + 180.0) / 360.0 * n), 0), n - 1)
    y = min(max(int((lat + 90.0) / 180.0 * n), 0), n - 1)
    d, s = 0, n // 2
    while s > 0:
        rx, ry = int((x & s) > 0), int((y & s) > 0)
        d += s * s * ((3 * rx) ^ ry)
        if ry == 0:
            if rx == 1:
                x, y = n - 1 - x, n - 1 - y
            x, y = y, x
        s //= 2
    return d


def geohash_ref(lon: float, lat: float, precision: int) -> str:
    """Scalar geohash by bisection (a value on a midpoint goes to the upper half)."""
    alphabet = "0123456789bcdefghjkmnpqrstuvwxyz"
    box = [[-180.0, 180.0], [-90.0, 90.0]]
    val, code, out = (lon, lat), 0, []
    for bit in range(5 * precision):
        lo, hi = box[bit % 2]
        mid = (lo + hi) / 2
        up = val[bit % 2] >= mid
        code = (code << 1) | up
        box[bit % 2] = [mid, hi] if up else [lo, mid]
        if bit % 5 == 4:
            out.append(alphabet[code])
            code = 0
    return "".join(out)


def sample_table_input():
    import geopandas as gpd
    import shapely

    rng = np.random.default_rng(SEED + 1)
    geoms = [shapely.Point(x, y) for x, y in zip(rng.uniform(2.0, 8.0, 12), rng.uniform(43.0, 47.0, 12))]
    geoms += [shapely.Point(5.999, 45.0), shapely.Point(6.001, 45.0), shapely.Point(5.9999999, 45.1),
              shapely.Point(6.0, 45.2), shapely.Point(0.001, 0.001), shapely.Point(-0.001, -0.001),
              shapely.Point(0.0, -0.0), shapely.Point(18.42, -33.92), shapely.Point(-46.63, -23.55),
              shapely.Point(179.99, -16.5), shapely.Point(-179.99, -16.5)]
    geoms += [shapely.box(2.0, 48.0, 2.05, 48.03),
              shapely.Point(6.0, 45.0).buffer(0.01),  # straddles the 31/32 seam
              shapely.box(-0.01, -0.01, 0.01, 0.01),  # four zones' corner
              shapely.Polygon([(7.0, 44.0), (7.05, 44.0), (7.0, 44.04)]),
              shapely.MultiPolygon([shapely.box(3.0, 31.0, 3.01, 31.01), shapely.box(3.02, 31.0, 3.03, 31.01)]),
              shapely.box(151.2, -33.9, 151.22, -33.88),
              shapely.box(-70.0, -80.0, -69.9, -79.98)]
    names = [f"site-{i:02d}" for i in range(len(geoms))]
    perm = rng.permutation(len(geoms))
    return gpd.GeoDataFrame({"site": [names[i] for i in perm]}, geometry=[geoms[i] for i in perm],
                            crs="EPSG:4326")


TILING_AOIS = (
    ("seam 6E at 45N", (5.75, 44.95, 6.25, 45.25), (10.0, 20.0, 40.0)),
    ("equator x prime meridian", (-0.06, -0.04, 0.06, 0.04), (10.0, 20.0, 40.0)),
    ("antimeridian edge at 180E", (179.9, -0.03, 180.0, 0.03), (10.0, 40.0)),
)


def cube_samples():
    """8 points and 2 polygons near (3.1 E, 31.1 N), ids s00..s09 in a ``site`` column."""
    import geopandas as gpd
    import shapely

    rng = np.random.default_rng(SEED + 2)
    geoms = [shapely.Point(round(x, 6), round(y, 6))
             for x, y in zip(3.0 + rng.uniform(0, 0.3, 8), 31.0 + rng.uniform(0, 0.3, 8))]
    geoms += [shapely.box(3.05, 31.05, 3.07, 31.06), shapely.box(3.2, 31.2, 3.21, 31.23)]
    return gpd.GeoDataFrame({"site": [f"s{i:02d}" for i in range(len(geoms))]}, geometry=geoms, crs="EPSG:4326")


def to_feature_collection(gdf) -> dict:
    """Plain-JSON GeoJSON (float repr: coordinates round-trip exactly)."""
    import shapely.geometry

    def listify(o):
        return [listify(v) for v in o] if isinstance(o, (list, tuple)) else o

    feats = [{"type": "Feature", "properties": {k: row[k] for k in gdf.columns if k != gdf.geometry.name},
              "geometry": {**(m := shapely.geometry.mapping(row.geometry)), "coordinates": listify(m["coordinates"])}}
             for _, row in gdf.iterrows()]
    return {"type": "FeatureCollection", "features": feats}


def _write_json(name: str, obj) -> None:
    (GOLDEN / name).write_text(json.dumps(obj, indent=1) + "\n")


def write_keys(g) -> None:
    pts, edges = make_points()
    lon, lat = pts[:, 0], pts[:, 1]
    np.save(GOLDEN / "points.npy", pts)

    order = g.hilbert_order(lon, lat)
    keys = np.array([hilbert_key_ref(x, y, g.HILBERT_BITS) for x, y in zip(lon.tolist(), lat.tolist())], np.int64)
    if not np.array_equal(np.argsort(keys, kind="stable"), order):
        raise SystemExit("hilbert_order disagrees with the scalar reference xy2d: not writing golden files")
    grid4 = g.hilbert_grid_keys(4)
    n = 16
    ref4 = np.array([[hilbert_key_ref(-180 + (c + .5) * 360 / n, -90 + (r + .5) * 180 / n, 4) for c in range(n)]
                     for r in range(n)])
    if not np.array_equal(grid4, ref4):
        raise SystemExit("hilbert_order (bits=4) disagrees with the scalar reference xy2d")
    np.save(GOLDEN / "hilbert_order.npy", order.astype(np.int64))
    np.save(GOLDEN / "hilbert_keys.npy", keys)
    np.save(GOLDEN / "hilbert_grid4_keys.npy", grid4.astype(np.int64))

    gh = g.geohashes(lon, lat)
    ref = [geohash_ref(x, y, g.GEOHASH_PRECISION) for x, y in zip(lon.tolist(), lat.tolist())]
    if gh != ref:
        raise SystemExit("geohash_encode disagrees with the scalar reference encoder")
    _write_json("geohash.json", {"precision": g.GEOHASH_PRECISION, "geohash": gh})

    copies = g.zone_rule_copies(lon, lat)
    first = copies["grid.utm_epsg"]
    for name, got in copies.items():
        bad = np.flatnonzero(got != first)
        if bad.size:
            raise SystemExit(f"zone rule copies disagree: {name} vs grid.utm_epsg at {bad.size} points, "
                             f"first {lon[bad[0]]!r}, {lat[bad[0]]!r}: {got[bad[0]]} != {first[bad[0]]}")
    np.save(GOLDEN / "utm_epsg.npy", first.astype(np.int32))
    k0 = N_RANDOM + N_CLUSTER
    _write_json("edge_cases.json", [{"name": name, "lon": x, "lat": y, "epsg": int(first[k0 + i]),
                                     "geohash": gh[k0 + i]} for i, (name, x, y) in enumerate(edges)])


def write_tables(g) -> None:
    gdf = sample_table_input()
    _write_json("sample_table_input.geojson", to_feature_collection(gdf))
    _write_json("sample_table.json", g.sample_table_summary(g.read_features("sample_table_input.geojson")))
    aois = []
    for name, bbox, scales in TILING_AOIS:
        for given, centre in g.tile_centre_zones(bbox, scales):
            if not np.array_equal(given, centre):
                raise SystemExit(f"tiling: a tile's zone differs from its centre's zone ({name})")
        aois.append({"name": name, "bbox": list(bbox), "scales": list(scales), **g.tiling_summary(bbox, scales)})
    _write_json("tiling.json", {"aois": aois})
    _write_json("spec_hash.json", {name: {"spec": spec.to_dict(), "stored": g.spec_summary(spec)}
                                   for name, spec in g.golden_specs().items()})
    _write_json("constants.json", g.constants())


def write_cube(g) -> None:
    import zarr

    path = GOLDEN / "cube_v1"
    if path.exists():
        shutil.rmtree(path)
    gdf = cube_samples()
    _write_json("cube_v1_samples.geojson", to_feature_collection(gdf))
    gdf = g.read_features("cube_v1_samples.geojson")
    summaries = []
    ds = g.run_campaign(gdf, path, scales=list(g.CUBE_SCALES), temporal=g.CUBE_WINDOW, model=g.CUBE_MODEL,
                        backend="emulator", chunk_size=g.CUBE_CHUNK, id_column=g.CUBE_ID_COLUMN, progress=False,
                        on_unit=summaries.append)
    if not (ds.status.values == g.OK).all() or len(summaries) != 6:
        raise SystemExit(f"cube_v1: expected 6 units all ok, got {ds.status.values.tolist()}")
    full = ds.embedding.values.astype(np.float32)
    start, si = PENDING_UNIT
    stop = min(start + g.CUBE_CHUNK, full.shape[0])
    group = zarr.open_group(path, mode="r+", zarr_format=3)
    # Data first, status last, each back to its fill value: the unit looks never written.
    group["embedding"][start:stop, si, :] = np.nan
    for name in ("input_res_m", "valid_fraction"):
        group[name][start:stop, si] = np.nan
    group["error"][start:stop, si] = ""
    group["status"][start:stop, si] = g.PENDING
    g.Cube.open(path).set_attrs(golden_fixture=f"make_golden.py: unit start={start} scale_index={si} reset to pending")
    sent = [s.requests["sent"] for s in summaries if (s.unit.start, s.unit.scale_index) == PENDING_UNIT]
    ds = g.open_cube(path)
    np.save(GOLDEN / "cube_v1_embedding.npy", full)
    _write_json("cube_v1.json", {
        "ids": ds.sample.values.tolist(), "lon": ds.lon.values.tolist(), "lat": ds.lat.values.tolist(),
        "geohash": ds.geohash.values.tolist(), "geometry_wkb_hex": ds.geometry.values.tolist(),
        "status": ds.status.values.tolist(), "spec_hash": ds.attrs["spec_hash"],
        "pending_unit": list(PENDING_UNIT), "pending_unit_requests": int(sent[0])})


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--force", action="store_true", help="overwrite existing golden files (read the warning)")
    parts = parser.add_mutually_exclusive_group()
    parts.add_argument("--cube-only", action="store_true")
    parts.add_argument("--no-cube", action="store_true")
    args = parser.parse_args(argv)
    if (GOLDEN / "points.npy").exists() and not args.force:
        raise SystemExit("golden files exist; regenerating refuses every existing cube. "
                         "Read make_golden.py's docstring, then pass --force.")
    sys.path.insert(0, str(ROOT))
    from tests.integration import test_golden as g

    if not args.cube_only:
        write_keys(g)
        write_tables(g)
    if not args.no_cube:
        write_cube(g)
    print(f"golden files written to {GOLDEN}")


if __name__ == "__main__":
    main()
