"""A tiny package for lg's translated-CI test."""


def greet(name: str) -> str:
    return f"Hello, {name}!"
