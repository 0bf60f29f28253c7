"""After running: PCA colours, GeoTIFF/PNG quicklooks, notebook helpers."""
