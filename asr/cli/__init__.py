"""The ``asr`` command line."""
