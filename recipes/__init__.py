"""Corpus preparation and the staged pipeline that every recipe runs.

Each corpus module turns an upstream layout into manifest JSONL (``docs/INTERFACES.md``) and has a
``main(argv)`` entry point (``python -m recipes.<corpus> --help``), which ``asr prepare <corpus>``
also calls:

- :mod:`recipes.librispeech` -- ``LibriSpeech/<subset>/<spk>/<chapter>/*.flac`` (+ optional download),
- :mod:`recipes.tedlium` -- TED-LIUM release 2 / 3 (``sph/`` + ``stm/``), segments by stm times,
- :mod:`recipes.tts` -- synthetic speech from the Debian TTS engines into a Kaldi data directory,
- :mod:`recipes.fixtures` -- tiny corpora in the exact upstream layouts, for tests,
- :mod:`recipes.results` -- the RESULTS.md table from decode directories.

``recipes/stages.sh`` holds the stage logic (prepare -> tokenizer -> CMVN -> train -> average/export ->
decode -> results) that every ``egs/<corpus>/run.sh`` sources.
"""

__all__: list[str] = []
