"""Inference: a model version loaded and answering, below serving, batch inference, evaluation and monitoring.

``predictor`` (validate -> transform -> model -> postprocess, and request-shaped rows from a table),
``versions`` (the versions a process keeps loaded), ``batch`` (a table scored with the same Predictor),
``scores`` (the one number per answer that drift tracks). Plain Python, no Ray: the callers above
wrap it in their deployments, jobs and actors.
"""
