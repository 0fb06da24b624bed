"""nas.supernets."""
