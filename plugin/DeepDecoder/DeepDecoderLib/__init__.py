"""Plain-Python parts of the Deep Decoder scripted module (see :mod:`DeepDecoderLib.logic`)."""
