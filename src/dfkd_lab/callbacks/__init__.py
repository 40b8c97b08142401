"""Lightning callbacks: metrics on disk, sample grids."""
