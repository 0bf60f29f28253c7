"""What to embed: sample tables from GeoDataFrames, work units, tilings of areas."""
