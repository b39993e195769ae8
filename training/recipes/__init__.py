"""Scripts that produced the shipped bundles in ``models/`` (run from the repository root).

``python -m training.recipes.covid_manifests``  the COVID split manifests (within-source and mixed)
``python -m training.recipes.ggo_manifest``     GGO manifest with normal lungs as empty-mask negatives
``python -m training.recipes.ggo_baseline``     the documented GGO baseline (thresholded lung intensity)
``python -m training.recipes.ship_bundle``      a run's bundle -> float16 shipped bundle with audits
"""
