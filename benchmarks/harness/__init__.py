"""The benchmark harness: operations, measured methods, references and checks, the
fresh-process timer, provenance and the report tables."""

__all__: list[str] = []
