"""blockasr's command line: the ``asr`` dispatcher, which stands above every package (asr, streaming,
server, recipes) so that none of them has to import the layers above it."""
