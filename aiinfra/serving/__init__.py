"""Serving: the Predictor (plain, tested without Ray) and the Ray Serve application around it."""
