"""nas.search."""
