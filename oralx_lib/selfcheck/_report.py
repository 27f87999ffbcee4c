"""The one line a passing self-check prints."""


def report(name: str, n: int) -> None:
    print(f"correct: {name} agrees with oralx_lib on {n} cases")
