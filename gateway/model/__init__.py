"""The shared model: what every stage and every driver agrees on, importing nothing of them.

    readings.py    samples (a driver's values) and readings (an indicator of an asset, canonical unit)
    units.py       units, UN/CEFACT codes and conversions
    catalogue.py   domains, asset types and indicators: the city's shared vocabulary
    rules.py       how an indicator is quantified at the edge (report by exception, windows, alarms)
    expression.py  the safe expression language of derived indicators
    schema.py      building blocks of every configuration model
    devices.py     what every protocol's device and point configuration has
    settings.py    the main configuration file
    driver.py      the contract every protocol driver fulfils
"""
