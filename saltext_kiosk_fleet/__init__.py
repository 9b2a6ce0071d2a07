"""
Salt extension entry point of the kiosk fleet pack.

``pip install .`` installs this package; Salt's loader finds it through the
``salt.loader`` entry point and loads ``modules/``, ``states/``, ``runners/``,
``beacons/`` and ``grains/`` from it (mapped from the repo's ``_modules/`` etc.).
"""
