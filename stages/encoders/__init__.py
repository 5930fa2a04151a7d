"""Encoders of stage one; the only code that imports open_clip or transformers."""
