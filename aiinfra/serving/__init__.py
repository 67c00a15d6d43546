"""Serving: the Ray Serve application (router and model deployments) over the inference core (aiinfra.inference)."""
