"""Command-line entry point (placeholder until the live pipeline lands)."""


def main() -> int:
    print("streamdit-live: the live pipeline is not built yet")
    return 0
