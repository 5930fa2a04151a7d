"""What several stages share: the protocol, label maps, heads, devices, precision, progress, key selection."""
