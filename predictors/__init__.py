"""nas.predictors."""
