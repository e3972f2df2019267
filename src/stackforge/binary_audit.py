"""Placeholder: filled in by the issue that owns it."""


def register(groups) -> None:
    """No commands yet."""
