"""Pure geometry, no I/O: pixel grids, the UTM-zone rule, location keys, areas of interest."""
