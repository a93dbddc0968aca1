"""The engine: the Deep Decoder, forward models and the one fitting loop. Knows no file format and no door."""
