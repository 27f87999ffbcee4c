"""The one line a passing self-check prints."""


def report(name: str, n: int) -> None:
    print(f"correct: {name} passed {n} checks against the reference implementation")
