"""The one table of steps: name -> ``module:Class`` (imported only when the step runs)."""

STEPS = {
    # generic HDF5 steps (base image)
    "hdf5.load": "daisy_steps.generic:LoadHDF5",
    "hdf5.save": "daisy_steps.generic:SaveHDF5",
    # tomography (tomopy image; ct.gather and ct.preview_sinogram need only the base image)
    "ct.load": "daisy_steps.ct.load:Load",
    "ct.normalize": "daisy_steps.ct.prep:Normalize",
    "ct.angles": "daisy_steps.ct.prep:Angles",
    "ct.minus_log": "daisy_steps.ct.prep:MinusLog",
    "ct.stripe": "daisy_steps.ct.prep:Stripe",
    "ct.find_center": "daisy_steps.ct.center:FindCenter",
    "ct.recon": "daisy_steps.ct.recon:Recon",
    "ct.save_slab": "daisy_steps.ct.output:SaveSlab",
    "ct.gather": "daisy_steps.ct.output:Gather",
    "ct.preview_sinogram": "daisy_steps.ct.output:PreviewSinogram",
    "sample.ct_phantom": "daisy_steps.ct.phantom:CTPhantom",
    # X-ray powder diffraction (pyfai image)
    "xrd.load_frames": "daisy_steps.xrd.steps:LoadFrames",
    "xrd.mask": "daisy_steps.xrd.steps:Mask",
    "xrd.integrate": "daisy_steps.xrd.steps:Integrate",
    "xrd.save_block": "daisy_steps.xrd.steps:SaveBlock",
    "xrd.gather": "daisy_steps.xrd.steps:Gather",
    "sample.xrd_eiger": "daisy_steps.xrd.sample:SampleXRDEiger",
}
