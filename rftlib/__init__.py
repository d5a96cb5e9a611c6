"""rftlib: robust fine-tuning (WiSE-FT), interpolation, sharpness and sparsity for CLIP models.

The library behind a reproducible study of *"In Search of the Successful Interpolation: On the Role
of Sharpness in CLIP Generalization"* (arXiv 2410.16476). Notation follows the paper:
``theta_zs`` (zero-shot weights), ``theta_ft`` (fine-tuned weights), ``alpha`` (interpolation
coefficient, 0 = zero-shot, 1 = fine-tuned) and ``rho`` (sharpness radius).

Example:
    >>> import rftlib
    >>> rftlib.__version__
    '0.1.0'
"""

__version__ = "0.1.0"
