"""The test suite, a package: helpers are imported as `from tests.synthetic import ...` and `from tests.paths import
...`; pytest puts the repository root on sys.path (rootdir-based import of a package), so `utils`, `nets` and the
entry scripts import as they do for users."""
