"""A tiny calculator: the demo project the example pipeline checks, tests and packages."""

__version__ = "1.4.0"


def add(a: float, b: float) -> float:
    return a + b


def divide(a: float, b: float) -> float:
    if b == 0:
        raise ZeroDivisionError("division by zero")
    return a / b
