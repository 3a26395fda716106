# The original DAISY design's configuration of the XRD workflow (HEPiX 2021, HEPS testbed),
# exactly as written there. `daisy import-config` translates it into a DAISY xrd config.
init_dict = {'loaddata': {'class_name': 'LoadHDF5', 'init_paras': {'inputfile_name': 'scan_00575_data_000001.h5'}},
             'loadmask': {'class_name': 'LoadHDF5', 'init_paras': {'inputfile_name': 'scan_00575_master.h5'}},
             'azintalg': {'class_name': 'AlgFAIIntegrate', 'init_paras': {'wavelength': '0.7293'}},
             'savedata': {'class_name': 'SaveHDF5', 'init_paras': {'outputfile_name': 'test_scan.h5'}}}
cfg_dict = {'azintalg': {'directDist': 169, 'centerX': 1049.967, 'centerY': 1063.892, 'pixelX': 75,
            'pixelY': 75, 'PlanRotation': 64.66877, 'tilt': 0.3753, 'azimin': 93, 'azimax': 115,
            'radmin': 10.0, 'radmax': 20, 'nth': 40}}
