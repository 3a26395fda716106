"""Tomography (CT) steps: load -> normalize -> angles -> minus-log -> stripe -> centre -> recon ->
save slab; gather slabs into one virtual volume; previews; a phantom data set.

Modules import tomopy only inside the steps that need it (normalize, minus_log, stripe,
find_center, recon, the phantom), so the rest runs in the base image and on the host.
Data-store keys shared by the steps:

``proj``        projections, (angles, rows, columns): raw counts after ct.load, then float32
                transmission (ct.normalize), attenuation (ct.minus_log), de-striped (ct.stripe)
``flat``/``dark``  flat and dark frames of the same rows (removed by ct.normalize)
``theta_file``  rotation angles read from the raw file, radians float32 (if it has them)
``theta``       the angles the reconstruction uses (ct.angles), radians float32
``rows``        (start, stop): the detector rows held, i.e. the sinogram slab
``detector_rows``  the detector's total row count
``center``      rotation centre in pixels (ct.find_center)
``recon``       the reconstructed slab, (rows, y, x) float32 (ct.recon)
``recon_info``  dict: algorithm, centre and options used (ct.recon), saved as attributes
"""
