"""The object differ: a create-diff-object for Python.

The pipeline is `read -> correlate -> compare -> include -> special -> output -> write`, one module
each; `diffobj.diff.diff_objects` runs it and returns a `DiffResult`.
"""
