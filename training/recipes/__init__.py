"""The commands that made the shipped bundles in ``models/`` (run from the repository root).

``python -m training.recipes.covid_manifests``   the covid split manifests (multi-source, unseen children)
``python -m training.recipes.crossval``          cross-validate a recipe; export its fold ensemble (covid)
``python -m training.recipes.ensemble``          average trained runs into one bundle (lungs)
``python -m training.recipes.ggo_manifest``      GGO manifest with normal lungs as empty-mask negatives
``python -m training.recipes.ggo_baseline``      the documented GGO baseline (thresholded lung intensity)
``python -m training.recipes.lung_field_check``  the lungs bundle's lung-field witness, measured
``python -m training.recipes.ship_bundle``       a run's bundle -> float16 shipped bundle with its audit

Recipes import library modules of ``training``, never each other.
"""
