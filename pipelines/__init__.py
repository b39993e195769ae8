"""The chest X-ray AI of cxr-node: image loading, shared preprocessing, model bundles, the chained pipeline.

No networking and no import of ``node`` (the DICOM side): inputs and outputs are the plain dataclasses
of :mod:`pipelines.results`. See README.md and BUNDLES.md in this folder.
"""
