"""The StreamDiT Live app."""
