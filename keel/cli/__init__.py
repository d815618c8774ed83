"""The `keel` command. Each subcommand is a thin shell over a Python API of the package."""
