"""Training code for StreamDiT."""
