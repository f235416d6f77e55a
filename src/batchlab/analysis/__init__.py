"""Pure functions over stored results: no training, no SQL, no plotting."""
