"""Training side of cxr-node: dataset adapters -> manifest -> honest splits -> trainers -> bundles.

May import ``pipelines`` (preprocessing, network factories, bundle format), never ``node``.
See training/README.md for the commands.
"""
