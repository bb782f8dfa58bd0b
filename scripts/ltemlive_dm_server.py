# $BACKGROUND$
"""ltemlive's instrument server for a Gatan camera, to be run INSIDE DigitalMicrograph (GMS 3.4+).

The first line makes DM run this script in a background thread, so DM's user interface stays responsive while
the server runs. Open this file in DM (File > Open), set the two paths below, and press Execute. DM's Output
window prints ``READY tcp://...``; press OK in the dialog to stop the server and release the camera.

What DM's Python environment needs (install with DM's Python package manager or its pip): numpy, pydantic>=2,
pyzmq, loguru, pyyaml. ltemlive itself need not be installed: the checkout below is put on sys.path (only its
``drivers`` and ``ltemlive.wire`` packages are imported - no torch). See docs/drivers.md, "Gatan (DigitalMicrograph)".
"""

import sys

LTEMLIVE_CHECKOUT = r"C:\ltemlive"  # the folder that contains drivers/ and ltemlive/
CONFIG = r""  # a YAML with gatan: {...} and server: {endpoint: ...}, e.g. r"C:\ltemlive\dm-server.yaml"; "" = defaults

if LTEMLIVE_CHECKOUT not in sys.path:
    sys.path.insert(0, LTEMLIVE_CHECKOUT)

import DigitalMicrograph as DM  # noqa: E402  (exists only inside DM)

from drivers.vendors.dm_server import main_in_dm  # noqa: E402

main_in_dm(CONFIG or None, DM)
