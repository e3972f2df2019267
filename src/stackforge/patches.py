"""Placeholder: being written."""


def register(groups) -> None:
    """No commands yet."""
