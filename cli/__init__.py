"""nas.cli."""
