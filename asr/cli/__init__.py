"""The library's commands (tokenizer, cmvn, train, train-lm, average, export); the ``asr``
dispatcher that lists them with the other packages' commands is ``blockasr.cli``."""
