"""``aiinfra demo``: the walking skeleton and its monitoring scenario, built on the platform's public parts.

``run`` drives every stage of the lifecycle once; ``scenario`` turns production traffic so the
autopilot retrains, canaries and promotes; ``clients`` are the synthetic production clients it
uses; ``report`` renders the loop's HTML page. Nothing in the platform imports this package.
"""
