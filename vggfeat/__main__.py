"""``python -m vggfeat`` runs the ``vggfeat`` command."""

from ._entry import run

run()
