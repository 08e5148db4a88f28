"""StreamDiT model core: pure PyTorch."""
