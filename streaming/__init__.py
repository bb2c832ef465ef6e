"""Stateful streaming recognition: online features, block decoders, endpointing, results."""

from streaming.endpoint import EndpointConfig, Endpointer
from streaming.factory import RecognizerFactory, make_recognizer_factory
from streaming.recognizer import Recognizer, Result, process_batch

__all__ = ["EndpointConfig", "Endpointer", "Recognizer", "RecognizerFactory", "Result", "make_recognizer_factory",
           "process_batch"]
