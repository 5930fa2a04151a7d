"""`expclip demo` and what it ships: synthetic faces, tiny random checkpoints saved like real ones, and the
seconds of pre-training on drawn faces that make the demo's own checkpoints tell expressions apart (`pretrain`).

Tests and benchmarks import the fixtures from here (`expclip.demo.synthetic`,
`expclip.demo.checkpoints`); production stages never do.
"""
