"""The decoder as a lossy codec: :mod:`.format` for the ``.ddc`` bytes, :mod:`.encode` for fitting and decoding."""
