"""The two Zarr store formats: sample cubes and tiling stores."""
