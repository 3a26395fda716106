"""The one table of steps: name -> ``module:Class`` (imported only when the step runs)."""

STEPS = {
    # generic HDF5 steps (base image)
    "hdf5.load": "daisy_steps.generic:LoadHDF5",
    "hdf5.save": "daisy_steps.generic:SaveHDF5",
}
