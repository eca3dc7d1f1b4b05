"""mstools: detect new multiple sclerosis lesions in longitudinal brain MRI.

The library is plain functions on arrays (``mstools.lesions``, ``mstools.metrics``,
``mstools.simulate``); ``mstools.io`` is the only module that reads or writes image
files. The command line lives in the separate ``cli`` package.
"""

__version__ = "0.1.0"
