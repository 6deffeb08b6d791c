"""The command line: thin wrappers that parse arguments and call the library.

Each command lives in a module of this package and is listed in :data:`COMMANDS`; a command's
module is imported only when that command (or the list of commands for ``--help``) is wanted, and
no command module imports torch at the top, so ``convscope --help`` and ``convscope CMD --help``
start in a fraction of a second. The grammar every command follows is in the README
("Command-line grammar").
"""
from __future__ import annotations

import click

from ._common import Group

# command name -> "module:attribute" in this package
COMMANDS = {
    "atlas": "atlas:atlas",
    "classify": "classify:classify",
    "concepts": "teach:concepts_",
    "demo": "serve:demo",
    "duplicates": "search:duplicates",
    "evolve": "training:evolve",
    "explain": "explain:explain",
    "export": "serve:export",
    "featvis": "featvis:featvis",
    "index": "search:index",
    "invariance": "explain:invariance",
    "layers": "layers:layers",
    "models": "layers:models",
    "organize": "search:organize",
    "probe": "training:probe",
    "project": "project:project",
    "search": "search:search",
    "serve": "serve:serve",
    "teach": "teach:teach",
}


@click.group(cls=Group, lazy=COMMANDS,
             context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.version_option(package_name="convscope")
def main():
    """convscope: see what a convolutional image classifier has learned.

    Results go to stdout (--json: one JSON record per line), notes and progress to stderr.
    Exit status: 0 done, 1 nothing could be processed or a failure, 2 a usage error.

    \b
    Example:
      convscope classify --samples
      convscope layers --model torchvision:resnet18 --no-pretrained
    """
    from ..runtime import keep_freed_memory

    keep_freed_memory()  # large freed tensors stay in the heap: no page faults on the next one


__all__ = ["main", "COMMANDS"]
