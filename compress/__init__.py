"""nas.compress."""
