"""Data files shipped with nas.supernets (see NOTICE)."""
