"""`expclip predict` and the Python API: faces found, cropped and scored zero-shot by CLIP (+ a head)."""
