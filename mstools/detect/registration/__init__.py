"""Registration-based detection of new lesions: elastix, deformation fields, candidates.

New lesions are where the follow-up cannot be explained by the baseline (paper 001:
Andresen et al.'s non-correspondence detection, subtraction after deformable
registration F - B o phi; Salem et al.'s deformation-aware detection; paper 000:
the deformation field shows what changed). The baseline is registered onto the
follow-up (rigid, affine, B-spline), and the follow-up minus the warped baseline is
thresholded into candidates that carry the local volume change and displacement.

Modules:

* :mod:`~mstools.detect.registration.parameters` -- the elastix parameter maps (defaults,
  parsing and validation of user files); pure Python.
* :mod:`~mstools.detect.registration.deformation` -- displacement fields: warping, Jacobian
  determinant, volume change, folding; pure NumPy/SciPy.
* :mod:`~mstools.detect.registration.detection` -- normalised subtractions, candidates and
  their features, the registration-failure check; pure NumPy.
* :mod:`~mstools.detect.registration.elastix` -- the only module that imports ``itk``
  (inside its functions, so that importing this package stays light).

Conventions: arrays have axes (i, j, k) of their NIfTI grid; displacement fields are
``(I, J, K, 3)`` float32 arrays in millimetres in the RAS+ world frame of the NIfTI
affine (ITK works in LPS+: the x and y components are negated on the way in and out,
see :mod:`mstools.sitk_bridge`). A displacement ``u`` on the follow-up grid maps the
follow-up point ``x`` to the baseline point ``x + u(x)`` (elastix's fixed-to-moving
transform), so the warped baseline is ``B(x + u(x))``.
"""
