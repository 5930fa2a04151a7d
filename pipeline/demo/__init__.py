"""`expclip demo` and what it ships: synthetic faces and tiny random checkpoints saved like real ones.

Tests and benchmarks import the fixtures from here (`expclip.demo.synthetic`,
`expclip.demo.checkpoints`); production stages never do.
"""
