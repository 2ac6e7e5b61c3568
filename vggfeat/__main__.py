"""``python -m vggfeat`` runs the ``vggfeat`` command."""

from .cli import main

main()
