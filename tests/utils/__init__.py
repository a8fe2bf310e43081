"""Test helpers shared by several test folders (import them as ``utils.<module>``).

* :mod:`utils.images` - small encoded test images (colours, EXIF orientation).
* :mod:`utils.model_factory` - tiny exported models that honour the model contract.
* :mod:`utils.servers` - a live API server in a thread, free ports, child processes.
"""
