"""Torch-free client side: the HTTP client of the service and the resumable folder runner it drives.

- ``protocol``: errors, retry policy, ``ProtectSettings`` (derived from ``pca_attack.options``), requests and parsing
- ``http``: ``AsyncPCAClient`` and its synchronous twin ``PCAClient``; ``RemoteProcessor`` for the runner
- ``plan`` (which files, where their outputs go), ``manifest`` (the resumable record), ``runner`` (``BatchRunner``)
"""
