"""Annotation with Label Studio: the right images to the experts, radflow's answers as pre-annotations, their labels
back as feedback that ``radflow loop`` turns into a new data version.

``config`` (labelling configs from the task kind), ``client`` (the REST calls), ``selection`` (strategies),
``results`` (answers <-> Label Studio results), ``agreement`` (inter-annotator agreement and resolution),
``push`` / ``pull`` (the two commands' bodies), ``server`` (Label Studio from its own virtual environment).
The ML backend Label Studio calls is a transport: :mod:`radflow.serve.ml_backend`.
"""

from __future__ import annotations

from radflow.annotate.client import LabelStudio, LabelStudioError
from radflow.annotate.config import LabelConfig, check_config, label_config
from radflow.annotate.pull import pull
from radflow.annotate.push import push

__all__ = ["LabelConfig", "LabelStudio", "LabelStudioError", "check_config", "label_config", "pull", "push"]
