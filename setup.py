"""Package layout (the rest of the metadata is in pyproject.toml).

The command line's sources live in the top-level ``cli/`` folder (the project's layout)
but install as the package ``mstools_cli``, so that an installed mstools never shadows
another distribution's ``cli`` package (issue 14).
"""

from setuptools import find_packages, setup

setup(
    packages=[*find_packages(include=["mstools", "mstools.*"]), "mstools_cli"],
    package_dir={"mstools_cli": "cli"},
)
