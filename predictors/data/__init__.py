"""Data files shipped with nas.predictors (see NOTICE)."""
