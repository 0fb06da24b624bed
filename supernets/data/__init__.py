"""nas.supernets.data."""
