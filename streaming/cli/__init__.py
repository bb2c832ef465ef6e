"""The commands that run the recognizer: ``asr transcribe`` and ``asr decode``."""
