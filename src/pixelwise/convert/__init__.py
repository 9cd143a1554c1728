"""Bring models trained with other libraries into pixelwise.

:func:`from_smp` converts a segmentation_models_pytorch model (the object, its ``save_pretrained`` folder or
its ``state_dict``) into the equivalent pixelwise model, weights included; ``pixelwise convert --from smp``
writes the result as a model folder.
"""

from pixelwise.convert.smp import SMP_ARCHITECTURES, from_smp

__all__ = ["SMP_ARCHITECTURES", "from_smp"]
