"""The composition root: the ``stepline`` command, the embedded all-in-one mode (``up``, ``demo``) and the W&B
importer. The only package that wires the SDK, the workers, the read side and the gateway together.
"""
